"""``wsiscan serve``: review results in a browser (index, deep-zoom viewer with heatmap, patch demo).

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart).  :func:`create_app` builds the
application over a results folder; the CLI runs it with uvicorn on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    """See :func:`wsiscan.serve.app.create_app` (imported on first use: it needs the serve extra)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
