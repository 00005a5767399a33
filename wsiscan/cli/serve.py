"""``wsiscan serve``: review a results folder in a browser (the ``serve`` extra: Starlette + uvicorn)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import click

from ..errors import OutputError, StoreError
from . import echo_err, main

INSTALL_HINT = 'pip install -e ".[serve]" (or `make install`)'
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); OutputError naming the address when it cannot be had."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OutputError(f"--host {host}: not an address of this machine ({exc.strerror}); use 127.0.0.1, "
                          f"or 0.0.0.0 to listen on every network interface") from exc
    family, _, _, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP; without it
    # every keep-alive response waits ~40 ms (Nagle's algorithm against the browser's delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OutputError(f"{host}:{port}: the port is in use (another server?); pass --port N, or --port 0 "
                              f"for a free one") from exc
        raise OutputError(f"{host}:{port}: cannot listen there ({exc.strerror}); pass another --host/--port") from exc
    return sock


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The default answers only this machine; 0.0.0.0 opens it to the network "
                   "(there is no login: only on a network you trust).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port (0: a free one, printed at start).")
@click.option("--source", type=click.Choice(["auto", "openslide", "store"]), default="auto", show_default=True,
              help="Slide pixels: the slide file through OpenSlide (native resolution), the tile store's copy, or "
                   "auto (the file when it is still where predict read it and unchanged, else the store).")
@click.option("--model", "-m", "models", multiple=True,
              help="A model for the patch demo (registry name or checkpoint), besides wsiscan/tiny, cached "
                   "registry models and the results' own checkpoints; repeatable.")
def serve(out_dir: Path, host: str, port: int, source: str, models: tuple[str, ...]) -> None:
    """Review the results in OUT_DIR (a `wsiscan predict -o` folder) in a web browser.

    An index of the slides, a deep-zoom viewer per slide (slide at full resolution, heatmap
    with opacity, threshold and live region outlines, hotspots, scale bar, spoken summary)
    and a patch demo page.  Read-only; serves only the result files under OUT_DIR and the
    slide files they name.  Stop with Ctrl+C.
    """
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: no such folder; give the -o folder of `wsiscan predict`")
    try:
        import uvicorn

        from ..serve.app import create_app
        from ..serve.results import list_slides
    except ImportError as exc:
        raise OutputError(f"`wsiscan serve` needs the serve extra ({exc}); install it with {INSTALL_HINT}") from exc
    slides = list_slides(out_dir)
    if not slides:
        raise StoreError(f"{out_dir}: no wsiscan results here (no <slide-id>/summary.json or store.zarr, no "
                         f"manifest.json); run `wsiscan predict SLIDE -o {out_dir}` first")
    hosts = list(LOCAL_HOSTS) + ["[::1]"]
    if host not in LOCAL_HOSTS:
        hosts = ["*"] if host in ("0.0.0.0", "::") else hosts + [host]
    app = create_app(out_dir, source=source, models=models, allowed_hosts=hosts)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    complete = sum(s.status == "complete" for s in slides)
    click.echo(f"wsiscan serve: {_url(host, bound_port)}  ({len(slides)} slides, {complete} complete, under "
               f"{out_dir.resolve()}; Ctrl+C stops)")
    if host not in LOCAL_HOSTS:
        echo_err(f"wsiscan: warning: listening on {host}: anyone who can reach this machine on port {bound_port} "
                 f"can see these results (there is no login)")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        app.state.handlers.views.close()
