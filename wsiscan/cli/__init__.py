"""The ``wsiscan`` command line: thin commands over the library.

This package is the only importer of click.  It turns :class:`WsiscanError` into a
one-line message on stderr and exit code 1 (Click's own usage errors exit with 2), and so
is a full disk or a denied permission (an ``OSError`` anywhere in the error's chain).
Each sub-module attaches its commands to :data:`main`; heavy libraries are imported
inside the commands so ``wsiscan --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import click

from ..errors import WsiscanError, WsiscanWarning

__all__ = ["main"]


class _WsiscanGroup(click.Group):
    """A click group that reports library errors, a full disk and a denied permission in one
    line, without a traceback, and keeps Python warnings (torch's among them) off stderr
    unless ``-v`` is given."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        except SystemExit as exc:
            if _runs_this_process():
                _exit_without_finalizing(exc.code)
            raise

    def invoke(self, ctx: click.Context):
        with _library_messages(verbose=bool(ctx.params.get("verbose"))):
            try:
                return super().invoke(ctx)
            except WsiscanError as exc:
                click.echo(f"wsiscan: error: {exc}", err=True)
                ctx.exit(1)
            except KeyboardInterrupt:
                click.echo("wsiscan: interrupted; rerun the same command to resume", err=True)
                ctx.exit(130)
            except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
                raise
            except Exception as exc:
                line = os_error_line(exc, output=ctx.meta.get(_OUTPUT_KEY))
                if line is None:
                    raise
                click.echo(f"wsiscan: error: {line}", err=True)
                ctx.exit(1)


def _runs_this_process() -> bool:
    """Whether this process was started to run wsiscan (``wsiscan ...`` or ``python -m wsiscan``),
    not a program that calls :data:`main` (a test's CliRunner)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "wsiscan.__main__" or os.path.basename(sys.argv[0]) in ("wsiscan",
                                                                                                  "wsiscan.exe")


def _exit_without_finalizing(code: Any) -> None:
    """End the process as the interpreter would, less its finalization: other threads are
    waited for and the atexit functions run (logging, multiprocessing, concurrent.futures),
    then ``os._exit``.  Tearing down torch's modules and libraries takes a second or more on a
    small machine, after the results are written; it frees nothing the OS would not.
    Where CPython's shutdown hook is missing, it returns and the interpreter exits as usual."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    run_exit_functions = getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exit_functions is None:
        return
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("text") prints it and exits with 1
        print(code, file=sys.stderr)
        status = 1
    shutdown()
    run_exit_functions()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


@contextlib.contextmanager
def _library_messages(*, verbose: bool) -> Iterator[None]:
    """Python warnings and library log records (torch, tifffile...) while a command runs:
    dropped, or with ``verbose`` one ``wsiscan: warning:`` line each on stderr.  wsiscan's
    own warnings (:class:`WsiscanWarning`, e.g. a store without checksums) always print,
    each distinct one once."""
    handler = _EchoLogHandler(logging.WARNING) if verbose else logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(handler)  # with a handler on the root, logging's last-resort stderr printer stays silent
    seen: set[str] = set()

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, WsiscanWarning):
            if str(message) not in seen:
                seen.add(str(message))
                echo_err(f"wsiscan: warning: {message}")
        elif verbose:
            _show_warning(message, category, filename, lineno)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default" if verbose else "ignore")
            warnings.simplefilter("always", WsiscanWarning)
            warnings.showwarning = show
            yield
    finally:
        root.removeHandler(handler)


class _EchoLogHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"wsiscan: warning: {record.name}: {record.getMessage()}", err=True)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """With -v: a Python warning as one line on stderr."""
    click.echo(f"wsiscan: warning: {category.__name__}: {message} ({filename}:{lineno})", err=True)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


_OUTPUT_KEY = "wsiscan.output"


def remember_output(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Click callback of an output option (``-o/--out``): the error handler names this folder
    when a full disk or a denied permission comes without a file name (a failed ``write``)."""
    if value is not None:
        ctx.meta[_OUTPUT_KEY] = value
    return value


def os_error_line(exc: BaseException, *, output: Any = None) -> str | None:
    """The one-line message for a full disk or a denied permission anywhere in ``exc``'s
    chain (the file, the problem and the fix); None for any other error.  ``output`` (the
    command's output folder) stands in for the file when the error names none."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _NO_SPACE | _DENIED:
            name = str(current.filename or output or "a file")
            if current.errno in _NO_SPACE:
                folder = os.path.dirname(os.path.abspath(name)) if current.filename else name
                return (f"{name}: no space left on the device ({current.strerror}); free space on the disk "
                        f"holding {folder}, or choose another -o/--out on a disk with room, and rerun")
            if current.errno == errno.EROFS:
                return f"{name}: the file system is read-only; choose another -o/--out on a writable disk"
            return (f"{name}: permission denied; make it writable (an output) or readable (an input), "
                    f"or choose another -o/--out")
        current = current.__cause__ or current.__context__
    return None


@click.group(cls=_WsiscanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wsiscan")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show Python warnings (from torch and other libraries); off by default.")
def main(verbose: bool) -> None:
    """wsiscan: tumour-probability heatmaps for whole-slide images."""


def echo_err(message: str) -> None:
    click.echo(message, err=True)


# Sub-modules register their commands on import.
from . import bench as _bench  # noqa: F401
from . import explain as _explain  # noqa: F401
from . import models as _models  # noqa: F401
from . import predict as _predict  # noqa: F401
from . import serve as _serve  # noqa: F401
from . import slides as _slides  # noqa: F401
from . import train as _train  # noqa: F401
from . import view as _view  # noqa: F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
