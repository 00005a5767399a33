"""A result folder that appears only when complete: built beside its final name, then renamed.

Used by ``wsiscan explain`` and ``wsiscan evaluate-slides``.  An existing folder is
refused before any work starts unless ``overwrite`` is set, and even then it is replaced
only once the new one is complete, so a failed run never leaves a half-written folder
nor destroys the previous result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import OutputError, StoreExistsError

__all__ = ["check_output_folder", "building_folder"]


def check_output_folder(out_dir: str | Path, *, overwrite: bool) -> Path:
    """Refuse (before any work) an existing folder without ``overwrite``, or a file in its place."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder; choose another -o/--out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise StoreExistsError(f"{out}: already exists; pass --overwrite to replace it or choose another -o/--out")
    parent = out.resolve().parent
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{parent}: cannot create the output's parent folder ({exc.strerror})") from exc
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{parent}: not writable; choose another -o/--out")
    return out


@contextlib.contextmanager
def building_folder(out_dir: str | Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a fresh hidden sibling folder to write into; on success it becomes ``out_dir``.

    On any exception the partial folder is removed and ``out_dir`` is left as it was.
    """
    out = check_output_folder(out_dir, overwrite=overwrite)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
