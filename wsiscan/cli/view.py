"""``wsiscan view``: review a result in napari with the wsiscan plugin (the ``viewer`` extra).

napari and the plugin are imported inside the command only, so the rest of the CLI works
without the extra installed; everything that touches Qt lives in the plugin's widget module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import echo_err, main

INSTALL_HINT = 'pip install -e ".[viewer]" (or `make install`)'


def _no_display() -> bool:
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return False
    return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@main.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
              help="Start the review at this probability threshold (default: the one predict used).")
@click.option("--source", type=click.Choice(["auto", "openslide", "store"]), default="auto", show_default=True,
              help="Slide pixels: the slide file through OpenSlide (native resolution), the tile store's copy, "
                   "or auto (OpenSlide when the slide file is still there and unchanged).")
@click.option("--screenshot", "screenshot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Save a PNG of the viewer window (slide, overlay and review panel) and exit instead of staying open.")
@click.pass_context
def view(ctx: click.Context, out_dir: Path, threshold: float | None, source: str, screenshot_path: Path | None) -> None:
    """Open the predict result OUT_DIR (OUT/<slide-id>, or OUT with one slide) in napari.

    Shows the slide as a lazy multiscale image with the tumour heatmap over it, and the
    "Heatmap review" panel: threshold with live outlines, hotspots, summary, GeoJSON export.
    """
    try:
        from .. import open_result  # the public API: numpy and wsiscan only

        result = open_result(out_dir)  # StoreError (exit 1) when OUT_DIR holds no result
        import napari
        from wsiscan_napari import open_review, save_window_screenshot  # ImportError without Qt
    except ImportError as exc:
        echo_err(f"wsiscan: error: `wsiscan view` needs the viewer extra ({exc}); install it with {INSTALL_HINT}")
        ctx.exit(1)
    if _no_display():
        echo_err("wsiscan: error: no display (DISPLAY is unset); run it on a desktop, or headless as "
                 f"`xvfb-run -a wsiscan view {out_dir} --screenshot view.png`")
        ctx.exit(1)

    viewer = napari.Viewer(title=f"wsiscan: {result.slide_id}", show=True)
    open_review(viewer, result.slide_dir, source=source, threshold=threshold)
    if screenshot_path is None:
        napari.run()
        return
    save_window_screenshot(viewer, screenshot_path)
    viewer.close()
    click.echo(f"{result.slide_id}: screenshot -> {screenshot_path}")
