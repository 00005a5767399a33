"""The web application of ``wsiscan serve`` (Starlette): pages, a JSON API, deep-zoom tiles.

Routes (all GET/HEAD, read-only, except the patch demo's POST, which writes nothing):

==========================================================  ============================================
``/``, ``/slide/{id}``, ``/patch``                          the index, the viewer of one slide, the patch demo
``/api/slides``                                             every slide under OUT (figures, status, files)
``/api/slides/{id}``                                        what the viewer needs (extent in um, sources...)
``/api/slides/{id}/regions?threshold=T``                    regions at T in um, as predict exports them
``/api/slides/{id}/speech.wav``                             the spoken summary
``/dzi/{id}/slide.dzi``, ``/dzi/{id}/slide_files/L/C_R.jpeg``  deep-zoom tiles of the slide
``/dzi/{id}/heatmap.dzi``, ``/dzi/{id}/heatmap_files/L/C_R.png``  deep-zoom tiles of the heatmap
``/files/{id}/{name}``                                      qc.png, overlay.png, tumor.geojson, summary.json, summary.wav
``/api/models``, ``POST /api/classify``                     the patch demo
``/static/...``                                             the pages' scripts, OpenSeadragon
==========================================================  ============================================

Slide ids are looked up in a listing of OUT and file names in a fixed list (see
:mod:`wsiscan.serve.results`), so no request can name a path; the Host header must be
one the server was started for, so a web page elsewhere cannot read the results through
the user's browser (DNS rebinding).
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Iterable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import SlideOpenError, StoreError, WsiscanError
from .patch import MAX_UPLOAD_BYTES, PatchModels, UploadError, decode_patch, explain_available
from .results import RESULT_FILES, find_slide_dir, list_slides, result_file
from .views import SOURCES, ViewCache, legend_stops

__all__ = ["create_app", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")
_TILE = re.compile(r"^(\d{1,6})_(\d{1,6})\.(jpeg|png)$")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=_SECURITY_HEADERS)


_PAGES = {  # page -> (title, body class, scripts); the bodies are static/<page>.body.html
    "index": ("wsiscan results", "", ("index.js",)),
    "viewer": ("wsiscan viewer", "viewer", ("openseadragon/openseadragon.min.js", "viewer.js")),
    "patch": ("wsiscan patch demo", "", ("patch.js",)),
}


def _page(name: str) -> HTMLResponse:
    """A page: the shared shell around static/<name>.body.html, with the page's scripts."""
    title, body_class, scripts = _PAGES[name]
    parts = {"{title}": title, "{body_class}": body_class,
             "{body}": (STATIC_DIR / f"{name}.body.html").read_text(encoding="utf-8"),
             "{scripts}": "\n".join(f'<script src="/static/{s}"></script>' for s in scripts)}
    html = (STATIC_DIR / "shell.html").read_text(encoding="utf-8")
    for key, value in parts.items():  # in this order: a body never holds the later keys
        html = html.replace(key, value)
    return HTMLResponse(html, headers=_SECURITY_HEADERS)


def _image_response(img: Any, fmt: str) -> Response:
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, "JPEG", quality=85)
    else:
        img.save(buf, "PNG", compress_level=1)
    # tiles of a result never change while its summary.json stays: the browser may keep them a while
    headers = {**_SECURITY_HEADERS, "Cache-Control": "private, max-age=300"}
    return Response(buf.getvalue(), media_type=f"image/{fmt}", headers=headers)


class _App:
    """The handlers, over one results folder."""

    def __init__(self, out_dir: Path, *, source: str, models: Iterable[str]) -> None:
        self.out_dir = out_dir.resolve()
        self.views = ViewCache(self.out_dir, source=source)
        self.patch_models = PatchModels(models, self._result_checkpoints())

    def _result_checkpoints(self) -> list[str]:
        """The model names the results were made with (registry names or checkpoint paths), from their summaries."""
        names: list[str] = []
        for entry in list_slides(self.out_dir):
            names += entry.model_names
        return sorted(set(names))

    # -- pages ------------------------------------------------------------------------------------
    def index(self, request: Request) -> Response:
        return _page("index")

    def viewer(self, request: Request) -> Response:
        if find_slide_dir(self.out_dir, request.path_params["slide_id"]) is None:
            raise HTTPException(404, "no such slide under the results folder")
        return _page("viewer")

    def patch(self, request: Request) -> Response:
        return _page("patch")

    # -- JSON -------------------------------------------------------------------------------------
    def slides(self, request: Request) -> Response:
        return JSONResponse({"out_dir": str(self.out_dir), "slides": [e.to_dict() for e in list_slides(self.out_dir)]},
                            headers=_SECURITY_HEADERS)

    def _view(self, slide_id: str):
        try:
            return self.views.get(slide_id)
        except SlideOpenError as exc:
            raise HTTPException(409, str(exc)) from exc
        except StoreError as exc:
            raise HTTPException(404, str(exc)) from exc

    def slide(self, request: Request) -> Response:
        from ..speech import stored_text

        view = self._view(request.path_params["slide_id"])
        r = view.result
        hm = view.heatmap_tiles
        scores = r.summary.get("scores", {})
        areas = r.summary.get("areas") if isinstance(r.summary.get("areas"), dict) else {}
        return JSONResponse({
            "slide_id": r.slide_id,
            "slide_path": str(r.slide_path),
            "source": view.source,
            "source_note": view.source_note,
            "slide_size_um": list(view.slide_size_um),
            "heatmap_origin_um": hm.origin_um,
            "heatmap_size_um": list(hm.size_um),
            "l0_mpp": r.l0_mpp,
            "cell_um": r.frame.cell_um,
            "threshold": r.threshold,
            "legend": legend_stops(),
            "scores": {**{k: scores.get(k) for k in ("max_probability", "top_k_mean_probability")},
                       **{k: areas.get(k, scores.get(k)) for k in ("tissue_area_mm2", "scored_area_mm2",
                                                                    "tumour_area_mm2", "region_area_mm2")}},
            "n_regions": r.summary.get("regions", {}).get("n"),
            "speech_text": stored_text(r.summary),
            "slide_dzi": f"/dzi/{r.slide_id}/slide.dzi",
            "heatmap_dzi": f"/dzi/{r.slide_id}/heatmap.dzi",
        }, headers=_SECURITY_HEADERS)

    def regions(self, request: Request) -> Response:
        view = self._view(request.path_params["slide_id"])
        try:
            threshold = float(request.query_params.get("threshold", view.result.threshold))
        except ValueError:
            return _error(400, "threshold must be a number between 0 and 1")
        if not 0.0 <= threshold <= 1.0:
            return _error(400, f"threshold {threshold} is outside 0..1")
        l0_mpp = view.result.l0_mpp
        out = []
        for rank, reg in enumerate(view.regions(threshold), start=1):
            geom = reg["geometry"]
            polys = [geom["coordinates"]] if geom["type"] == "Polygon" else list(geom["coordinates"])
            rings = [[[x * l0_mpp, y * l0_mpp] for x, y in ring] for poly in polys for ring in poly]
            xs = [p[0] for ring in rings for p in ring]
            ys = [p[1] for ring in rings for p in ring]
            out.append({"rank": rank, "max_probability": reg["max_probability"],
                        "mean_probability": reg["mean_probability"], "area_mm2": reg["area_mm2"],
                        "bbox_um": [min(xs), min(ys), max(xs), max(ys)], "rings_um": rings})
        return JSONResponse({"threshold": threshold, "n": len(out), "area_mm2": sum(r["area_mm2"] for r in out),
                             "regions": out}, headers=_SECURITY_HEADERS)

    def speech(self, request: Request) -> Response:
        from ..speech import SPEECH_WAV_NAME, find_engine, stored_text, wav_bytes

        view = self._view(request.path_params["slide_id"])
        stored = view.result.summary.get("speech") or {}
        wav = view.result.slide_dir / SPEECH_WAV_NAME
        if stored.get("wav") and wav.is_file():
            return FileResponse(wav, media_type="audio/wav", headers=_SECURITY_HEADERS)
        if find_engine() is None:
            return _error(503, "no speech engine (espeak-ng) on the server; install espeak-ng, or read the text")
        try:
            data = wav_bytes(stored_text(view.result.summary))
        except WsiscanError as exc:
            return _error(503, str(exc))
        return Response(data, media_type="audio/wav", headers=_SECURITY_HEADERS)

    # -- tiles ------------------------------------------------------------------------------------
    def _generator(self, request: Request) -> tuple[Any, str]:
        """The tile generator and image format of a /dzi/{id}/{kind}... request."""
        kind = request.path_params["kind"]
        if kind not in ("slide", "heatmap"):
            raise HTTPException(404, "no such image (slide or heatmap)")
        view = self._view(request.path_params["slide_id"])
        return (view.slide_tiles, "jpeg") if kind == "slide" else (view.heatmap_tiles, "png")

    def dzi(self, request: Request) -> Response:
        gen, fmt = self._generator(request)
        return Response(gen.get_dzi(fmt), media_type="application/xml", headers=_SECURITY_HEADERS)

    def tile(self, request: Request) -> Response:
        gen, want = self._generator(request)
        match = _TILE.match(request.path_params["tile"])
        if match is None or match.group(3) != want:
            raise HTTPException(404, f"no such tile (expected C_R.{want})")
        try:
            img = gen.get_tile(int(request.path_params["level"]), (int(match.group(1)), int(match.group(2))))
        except ValueError as exc:
            raise HTTPException(404, f"no such tile: {exc}") from exc
        return _image_response(img, want)

    # -- files ------------------------------------------------------------------------------------
    def file(self, request: Request) -> Response:
        path = result_file(self.out_dir, request.path_params["slide_id"], request.path_params["name"])
        if path is None:
            raise HTTPException(404, f"not a result file; the server hands out {', '.join(RESULT_FILES)}")
        return FileResponse(path, media_type=RESULT_FILES[path.name], headers=_SECURITY_HEADERS)

    # -- patch demo -------------------------------------------------------------------------------
    def models(self, request: Request) -> Response:
        return JSONResponse({"models": self.patch_models.describe(), "max_upload_bytes": MAX_UPLOAD_BYTES,
                             "gradcam": explain_available()}, headers=_SECURITY_HEADERS)

    async def classify(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_UPLOAD_BYTES + 64 * 1024:
            return _error(413, f"the upload is {int(length) / 2**20:.1f} MiB, more than the "
                               f"{MAX_UPLOAD_BYTES // 2**20} MiB the patch demo takes; upload a patch or a small image")
        async with request.form(max_files=1, max_fields=4) as form:
            upload = form.get("file")
            model = str(form.get("model") or "")
            if upload is None or isinstance(upload, str):
                return _error(400, "no file in the upload; choose a PNG, JPEG or TIFF patch")
            data = await upload.read(MAX_UPLOAD_BYTES + 1)
            name = Path(upload.filename or "upload").name
        try:
            rgb = decode_patch(data, filename=name)
            result = await run_in_threadpool(self.patch_models.classify, rgb, model)
        except UploadError as exc:
            status = 413 if ("MiB" in str(exc) or "larger than" in str(exc)) else 400
            return _error(status, str(exc))
        except WsiscanError as exc:
            return _error(500, str(exc))
        return JSONResponse({"file": name, **result}, headers=_SECURITY_HEADERS)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    if request.url.path.startswith(("/api/", "/dzi/", "/files/")):
        return _error(status, str(detail))
    import html

    body = (f"<!doctype html><title>wsiscan: {status}</title><link rel=stylesheet href=/static/wsiscan.css>"
            f"<main class=page><h1>{status}</h1><p class=error>{html.escape(str(detail))}</p>"
            f"<p><a href=/>back to the index</a></p></main>")
    return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)


def create_app(out_dir: str | Path, *, source: str = "auto", models: Iterable[str] = (),
               allowed_hosts: Iterable[str] = ("127.0.0.1", "localhost", "[::1]")) -> Starlette:
    """The application over the results folder ``out_dir``.

    ``source``: slide pixels from the slide file (``openslide``), the tile store (``store``) or
    the file when it is still there and unchanged (``auto``).  ``models``: extra models for the
    patch page.  ``allowed_hosts``: the Host header values accepted.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    handlers = _App(Path(out_dir), source=source, models=models)
    routes = [
        Route("/", handlers.index),
        Route("/slide/{slide_id}", handlers.viewer),
        Route("/patch", handlers.patch),
        Route("/api/slides", handlers.slides),
        Route("/api/slides/{slide_id}", handlers.slide),
        Route("/api/slides/{slide_id}/regions", handlers.regions),
        Route("/api/slides/{slide_id}/speech.wav", handlers.speech),
        Route("/dzi/{slide_id}/{kind:str}.dzi", handlers.dzi),
        Route("/dzi/{slide_id}/{kind:str}_files/{level:int}/{tile}", handlers.tile),
        Route("/files/{slide_id}/{name}", handlers.file),
        Route("/api/models", handlers.models),
        Route("/api/classify", handlers.classify, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC_DIR, follow_symlink=False), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.handlers = handlers
    return app
