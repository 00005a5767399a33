"""Deep-zoom tile latency of ``wsiscan serve``: time to serve one tile over HTTP, slide already open.

Makes a result to serve (a synthetic JPEG-tiled slide scored by ``wsiscan predict --model
wsiscan/tiny``; or ``--out OUT --slide-id ID`` for an existing one), starts the real app with
uvicorn on 127.0.0.1, opens the slide with one request (the "cached slide": the server keeps it
open), then requests tiles one at a time over a keep-alive connection, as a browser does, and
times each from request to last byte.  Every tile is requested once (no tile cache helps):
random tiles of the finest level (what a pathologist at full resolution sees), of the level
4x coarser, and of the heatmap at the finest level.

    python benchmarks/bench_serve.py                         # 8192 x 8192 px synthetic slide
    python benchmarks/bench_serve.py --out out --slide-id CMU-1-Small-Region -o bench-out/serve.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def make_result(work: Path, size_px: int) -> tuple[Path, str]:
    from click.testing import CliRunner

    from wsiscan.cli import main
    from wsiscan.testing import write_synthetic_slide

    slide = work / "bench-serve.tif"
    w, h = size_px, size_px
    boxes = ((w // 10, h // 10, w // 2, h // 2), (w // 2 + w // 10, h // 3, w - w // 10, h - h // 10))
    write_synthetic_slide(slide, dimensions_px=(w, h), downsamples=(1, 4, 16), boxes=boxes, compression="jpeg")
    r = CliRunner().invoke(main, ["predict", str(slide), "-o", str(work / "out"), "--model", "wsiscan/tiny", "-q"])
    if r.exit_code != 0:
        raise SystemExit(f"predict failed: {r.output}")
    return work / "out", "bench-serve"


class Server:
    def __init__(self, out: Path) -> None:
        import uvicorn

        from wsiscan.cli.serve import bind_socket  # the CLI's socket (TCP, so asyncio sets TCP_NODELAY)
        from wsiscan.serve.app import create_app

        self.sock = bind_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(create_app(out), log_level="warning", access_log=False,
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes, float]:
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    return resp.status, body, time.perf_counter() - t0


def dzi_size(xml: bytes) -> tuple[int, int, int]:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml)
    return int(root[0].get("Width")), int(root[0].get("Height")), int(root.get("TileSize"))


def time_tiles(conn, slide_id: str, kind: str, level_below_top: int, n: int, rng: random.Random) -> dict[str, Any]:
    status, xml, _ = get(conn, f"/dzi/{slide_id}/{kind}.dzi")
    assert status == 200, xml
    w, h, tile = dzi_size(xml)
    top = math.ceil(math.log2(max(w, h)))
    level = top - level_below_top
    lw, lh = math.ceil(w / 2**level_below_top), math.ceil(h / 2**level_below_top)
    addresses = [(c, r) for c in range(math.ceil(lw / tile)) for r in range(math.ceil(lh / tile))]
    rng.shuffle(addresses)
    ext = "jpeg" if kind == "slide" else "png"
    times_ms, sizes = [], []
    for c, r in addresses[:n]:
        status, body, dt = get(conn, f"/dzi/{slide_id}/{kind}_files/{level}/{c}_{r}.{ext}")
        assert status == 200, body[:200]
        times_ms.append(dt * 1000.0)
        sizes.append(len(body))
    times_ms.sort()
    q = lambda p: times_ms[min(len(times_ms) - 1, int(round(p * (len(times_ms) - 1))))]  # noqa: E731
    return {"image": kind, "level": level, "levels_below_full": level_below_top, "tile_px": tile,
            "n_tiles": len(times_ms), "median_ms": q(0.5), "p90_ms": q(0.9), "max_ms": times_ms[-1],
            "mean_kb": sum(sizes) / len(sizes) / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="an existing results folder (with --slide-id)")
    ap.add_argument("--slide-id", help="the slide to serve from --out")
    ap.add_argument("--size-px", type=int, default=8192, help="side of the synthetic slide (default 8192)")
    ap.add_argument("--tiles", type=int, default=200, help="tiles timed per row (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="wsiscan-bench-serve-") as tmp:
        if args.out:
            if not args.slide_id:
                ap.error("--out needs --slide-id")
            out, slide_id = args.out, args.slide_id
        else:
            t0 = time.perf_counter()
            out, slide_id = make_result(Path(tmp), args.size_px)
            print(f"made and scored a {args.size_px} px synthetic slide in {time.perf_counter() - t0:.1f} s")
        server = Server(out)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            status, body, open_s = get(conn, f"/api/slides/{slide_id}")  # opens and keeps the slide
            assert status == 200, body
            info = json.loads(body)
            rng = random.Random(args.seed)
            rows = [time_tiles(conn, slide_id, "slide", 0, args.tiles, rng),
                    time_tiles(conn, slide_id, "slide", 2, args.tiles, rng),
                    time_tiles(conn, slide_id, "heatmap", 0, args.tiles, rng)]
        finally:
            conn.close()
            server.stop()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"slide {slide_id} ({info['source']}), first request (opens the slide) {open_s * 1000:.0f} ms; "
          f"load {load:.2f}")
    print(f"{'image':8} {'level':>5} {'tiles':>5} {'median ms':>10} {'p90 ms':>8} {'max ms':>8} {'kB':>6}")
    for r in rows:
        print(f"{r['image']:8} {r['level']:>5} {r['n_tiles']:>5} {r['median_ms']:>10.1f} {r['p90_ms']:>8.1f} "
              f"{r['max_ms']:>8.1f} {r['mean_kb']:>6.1f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({
            "command": shlex.join([sys.executable, *sys.argv]), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "load_1min": load, "slide_id": slide_id,
            "source": info["source"], "open_ms": open_s * 1000, "rows": rows}, indent=2))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
