"""The ``wsiscan`` command line: thin commands over the library.

This package is the only importer of click.  It turns :class:`WsiscanError` into a
one-line message on stderr and exit code 1 (Click's own usage errors exit with 2).
Each sub-module attaches its commands to :data:`main`; heavy libraries are imported
inside the commands so ``wsiscan --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Any, Iterator

import click

from ..errors import WsiscanError, WsiscanWarning

__all__ = ["main"]


class _WsiscanGroup(click.Group):
    """A click group that reports library errors in one line, without a traceback."""

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        try:
            with _one_line_warnings():
                return super().invoke(ctx)
        except WsiscanError as exc:
            click.echo(f"wsiscan: error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("wsiscan: interrupted; rerun the same command to resume", err=True)
            ctx.exit(130)


@click.group(cls=_WsiscanGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wsiscan")
def main() -> None:
    """wsiscan: tumour-probability heatmaps for whole-slide images."""


def echo_err(message: str) -> None:
    click.echo(message, err=True)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Print each distinct :class:`WsiscanWarning` once, as ``wsiscan: warning: ...``;
    other warnings print as Python prints them."""
    seen: set[str] = set()
    python_show = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, WsiscanWarning):
            python_show(message, category, *args, **kwargs)
        elif str(message) not in seen:
            seen.add(str(message))
            echo_err(f"wsiscan: warning: {message}")

    with warnings.catch_warnings():
        warnings.simplefilter("always", WsiscanWarning)
        warnings.showwarning = show
        yield


# Sub-modules register their commands on import.
from . import slides as _slides  # noqa: E402,F401
from . import predict as _predict  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401
from . import train as _train  # noqa: E402,F401
from . import view as _view  # noqa: E402,F401
from . import bench as _bench  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401
from . import explain as _explain  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
