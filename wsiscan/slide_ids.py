"""Slide ids: the folder name OUT/<slide-id>/ a slide's results go to.

An id is made from the slide's file name and is always a single, safe folder name:

* the file's suffix goes (``.svs``; ``.ome.tif``/``.ome.tiff`` as one suffix), the rest
  is NFC-normalised and keeps every Unicode letter, digit and combining mark, plus ``.``,
  ``_`` and ``-``; any other character (path separators, NUL and other control or format
  characters, spaces, punctuation, symbols) becomes ``_``, and runs of ``_`` shrink to one;
* leading and trailing dots go, so an id is never ``.``, ``..`` or a hidden folder;
  an id left empty becomes ``slide``;
* an id is at most :data:`MAX_ID_BYTES` bytes of UTF-8, which leaves room under the
  255-byte file-name limit of common file systems for a disambiguation suffix and for the
  temporary names written beside a result.

Within one run the ids are unique (:func:`unique_slide_ids`): the first slide with a given
id keeps it, and each later slide whose id is already taken (compared case-insensitively,
as macOS and Windows file systems compare names) gets ``-`` and the first 8 hex digits of
the SHA-256 of its absolute path appended.  The same inputs in the same order give the
same ids on every rerun, so a killed run resumes into the same folders.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

__all__ = ["MAX_ID_BYTES", "slide_id_for", "unique_slide_ids"]

MAX_ID_BYTES = 200  # of a file name's 255 bytes; the rest is for "-<hash>" and temporary suffixes
_HASH_HEX = 8
_KEEP_PUNCTUATION = frozenset("._-")
_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif")


def _keep(char: str) -> bool:
    return char in _KEEP_PUNCTUATION or unicodedata.category(char)[0] in "LNM"


def _truncate_utf8(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", errors="ignore")  # never cuts a character in half


def slide_id_for(path: str | Path) -> str:
    """The safe folder name for a slide file (see the module docstring for the rules)."""
    name = unicodedata.normalize("NFC", os.path.basename(str(path)))
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            break
    else:
        stem = Path(name).stem if name not in ("", ".", "..") else ""
    text = "".join(c if _keep(c) else "_" for c in stem)
    text = re.sub(r"_+", "_", text).strip(".")
    text = _truncate_utf8(text, MAX_ID_BYTES).strip(".")
    return text or "slide"


def unique_slide_ids(paths: Iterable[str | Path]) -> list[str]:
    """One id per path, in order, unique within the list (case-insensitively).

    A later path whose id is taken gets ``-`` plus 8 hex digits of its absolute path's
    SHA-256 (16 digits, then a counter, in the unlikely case that is taken too).
    """
    ids: list[str] = []
    taken: set[str] = set()
    for path in paths:
        base = slide_id_for(path)
        slide_id = base
        if slide_id.casefold() in taken:
            digest = hashlib.sha256(os.path.abspath(str(path)).encode("utf-8", "surrogateescape")).hexdigest()
            stem = _truncate_utf8(base, MAX_ID_BYTES - 2 * _HASH_HEX - 1)
            candidates = [f"{stem}-{digest[:_HASH_HEX]}", f"{stem}-{digest[:2 * _HASH_HEX]}"]
            candidates += [f"{stem}-{digest[:2 * _HASH_HEX - 3]}{n:03d}" for n in range(1000)]
            slide_id = next(c for c in candidates if c.casefold() not in taken)
        taken.add(slide_id.casefold())
        ids.append(slide_id)
    return ids
