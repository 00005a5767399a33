"""The rules for output folders: checked before any work, created only when needed.

* ``tile`` and ``predict`` write into ``OUT/<slide-id>/``: :func:`check_writable` tests
  ``OUT`` with a real write before the slide is planned, :func:`plan_slide_output`
  plans the slide and names its folder and store (:mod:`wsiscan.layout`), and
  :func:`make_slide_dir` creates the folder once the caller has checked what is there.
* ``wsiscan explain`` and ``wsiscan evaluate-slides`` write a folder that appears only
  when complete (:func:`building_folder`): built beside its final name, then renamed.
  An existing folder is refused before any work starts unless ``overwrite`` is set, and
  even then it is replaced only once the new one is complete, so a failed run never
  leaves a half-written folder nor destroys the previous result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from .errors import OutputError, StoreExistsError
from .layout import slide_dir_for, store_path

if TYPE_CHECKING:
    from .config import Config
    from .tiling import TilingPlan

__all__ = ["check_output_folder", "building_folder", "check_writable", "plan_slide_output", "make_slide_dir"]


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


def check_writable(out_dir: Path) -> None:
    """Raise :class:`OutputError` unless files can be created in ``out_dir`` (or its nearest existing parent)."""
    probe = out_dir
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"{out_dir}: {probe} is a file, not a folder; choose another -o/--out")
    try:  # a real write: os.access says yes to root even where writes fail
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        why = "permission denied" if isinstance(exc, PermissionError) else (exc.strerror or str(exc))
        raise OutputError(f"{out_dir}: cannot write into {probe} ({why}); choose another -o/--out") from exc


def plan_slide_output(slide_path: str | Path, out_dir: str | Path, config: Config, *,
                      stride_px: int | None = None, slide_id: str | None = None) -> tuple[TilingPlan, str, Path, Path]:
    """Check that ``out_dir`` is writable, plan the slide; (plan, slide id, slide folder, store path).

    Creates nothing: :func:`make_slide_dir` does, once the caller has checked what is there.
    ``slide_id`` is the run's unique id for the slide (:func:`wsiscan.slide_ids.unique_slide_ids`);
    None: the id of the slide's file name.
    """
    from .tiling import plan_tiling

    check_writable(Path(out_dir))
    plan = plan_tiling(slide_path, config, stride_px=stride_px)
    slide_dir = Path(out_dir) / slide_id if slide_id else slide_dir_for(out_dir, plan.slide_path)
    return plan, slide_dir.name, slide_dir, store_path(slide_dir)


def make_slide_dir(slide_dir: Path) -> None:
    """Create a slide's output folder, or raise :class:`OutputError` saying why not."""
    try:
        slide_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{slide_dir}: cannot create the output folder ({exc.strerror}); choose another -o/--out") from exc
