"""Shared by the ``wsiscan serve`` tests (no tests here): a results folder made by the real
``wsiscan predict --model wsiscan/tiny``, and a live server on 127.0.0.1.

The folder holds three finished slides (``syn-a``, ``syn-b`` and ``syn-moved``, whose slide
file is deleted after predict, so the viewer must fall back to the tile store) and one
slide that failed (``broken``, random bytes), recorded in ``manifest.json``.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np

from wsiscan.testing import write_synthetic_slide

SLIDE_IDS = ("broken", "syn-a", "syn-b", "syn-moved")
_CACHE: dict[str, Path] = {}


def make_results(tmp_path_factory) -> Path:
    """OUT with the four slides above (made once per test session)."""
    if "out" in _CACHE:
        return _CACHE["out"]
    from cli_helpers import run

    base = tmp_path_factory.mktemp("serve")
    slides = base / "slides"
    slides.mkdir()
    write_synthetic_slide(slides / "syn-a.tif")
    write_synthetic_slide(slides / "syn-b.tif", dimensions_px=(3072, 2048))
    moved = slides / "syn-moved.tif"
    shutil.copyfile(slides / "syn-a.tif", moved)
    broken = slides / "broken.svs"
    broken.write_bytes(np.random.default_rng(1).integers(0, 256, 40_000, dtype=np.uint8).tobytes())
    out = base / "out"
    r = run("predict", slides / "syn-a.tif", slides / "syn-b.tif", moved, broken, "-o", out,
            "--model", "wsiscan/tiny", "-q", "--keep-pixels")  # syn-moved is shown from the store's pixels
    assert r.exit_code == 1, r.output  # the broken slide fails, the others finish
    for sid in ("syn-a", "syn-b", "syn-moved"):
        assert (out / sid / "summary.json").is_file(), (sid, r.output)
    moved.unlink()
    _CACHE["out"] = out
    return out


class LiveServer:
    """The app on 127.0.0.1 (a free port) with uvicorn, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as the CLI
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


def raw_get(port: int, raw_path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET exactly ``raw_path`` (no client-side normalisation of ``..``): (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"{host}:{port}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
