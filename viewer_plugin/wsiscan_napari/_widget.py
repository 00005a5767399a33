"""The "Heatmap review" dock widget: the only module of the plugin that imports Qt.

It binds to the heatmap layer the reader made (``layer.metadata["wsiscan"]["role"] ==
"heatmap"``) and offers: a probability threshold with a live outline of the regions
(a shapes layer), a hotspot table (click to centre and zoom), the summary numbers of
summary.json, GeoJSON export in predict's schema, and a screenshot.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from wsiscan.layout import exported_geojson_name

from ._layers import (
    Hotspot,
    WsiscanResult,
    export_geojson,
    is_smoke_result,
    legend_rgb,
    open_result,
    rank_hotspots,
    region_rings_um,
    summary_rows,
    threshold_regions,
    view_for_bbox,
)

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["HeatmapReviewWidget", "open_review", "save_window_screenshot"]

SLIDER_STEPS = 100  # threshold resolution 0.01
OUTLINE_COLOR = "cyan"
OUTLINE_WIDTH_SCREEN_PX = 2.0
TOP_N_HOTSPOTS = 20


def _camera(viewer: Any) -> Any:
    return viewer.scene.camera  # napari >= 0.9 (the viewer extra pins it)


def _canvas_size_px(viewer: Any) -> tuple[int, int]:
    h, w = viewer.canvas.size
    return int(h), int(w)


class HeatmapReviewWidget(QWidget):
    """Threshold, hotspots, summary and export for the wsiscan result open in ``napari_viewer``."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.result: WsiscanResult | None = None
        self.heatmap_layer: Any = None
        self.regions_layer: Any = None
        self.cells: np.ndarray | None = None
        self.threshold = 0.5
        self.regions: list[dict[str, Any]] = []
        self.hotspots: list[Hotspot] = []
        self._outline_zoom = 0.0
        self._build_ui()
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(30)
        self._debounce.timeout.connect(lambda: self.set_threshold(self.slider.value() / SLIDER_STEPS))
        self.viewer.layers.events.inserted.connect(self._on_layers_changed)
        self.viewer.layers.events.removed.connect(self._on_layers_changed)
        _camera(self.viewer).events.zoom.connect(self._on_zoom)
        self._on_layers_changed()

    def detach(self) -> None:
        """Stop following the viewer (called when the widget closes)."""
        for emitter, callback in ((self.viewer.layers.events.inserted, self._on_layers_changed),
                                  (self.viewer.layers.events.removed, self._on_layers_changed),
                                  (_camera(self.viewer).events.zoom, self._on_zoom)):
            emitter.disconnect(callback)

    def closeEvent(self, event: Any) -> None:
        self.detach()
        super().closeEvent(event)

    # -- UI ---------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.source_label = QLabel("open a wsiscan result: File > Open Folder… (OUT/<slide-id>)")
        self.source_label.setWordWrap(True)
        layout.addWidget(self.source_label)
        self.smoke_label = QLabel("<b>NOT A TUMOUR CLASSIFIER</b>: this result was made with the smoke-test "
                                  "model wsiscan/tiny")
        self.smoke_label.setWordWrap(True)
        self.smoke_label.setStyleSheet("color: white; background: #c00000; padding: 4px;")
        self.smoke_label.setVisible(False)
        layout.addWidget(self.smoke_label)
        layout.addWidget(self._legend())

        box = QGroupBox("Threshold")
        row = QHBoxLayout(box)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, SLIDER_STEPS)
        self.slider.setValue(round(self.threshold * SLIDER_STEPS))
        self.slider.setToolTip("tumour probability threshold; regions update live")
        self.slider.valueChanged.connect(self._on_slider)
        self.threshold_label = QLabel("0.50")
        row.addWidget(self.slider)
        row.addWidget(self.threshold_label)
        layout.addWidget(box)
        self.regions_label = QLabel("")
        layout.addWidget(self.regions_label)

        box = QGroupBox("Hotspots (click to go there)")
        col = QVBoxLayout(box)
        rank_row = QHBoxLayout()
        rank_row.addWidget(QLabel("rank by"))
        self.rank_by = QComboBox()
        self.rank_by.addItems(["max probability", "mean probability"])
        self.rank_by.currentIndexChanged.connect(lambda _i: self._refresh_hotspots())
        rank_row.addWidget(self.rank_by)
        col.addLayout(rank_row)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["#", "max p", "mean p", "area mm²"])
        rows_header, columns_header = self.table.verticalHeader(), self.table.horizontalHeader()
        if rows_header is None or columns_header is None:  # a QTableWidget makes both; the Qt stubs allow None
            raise RuntimeError("the hotspot table has no header views")
        rows_header.setVisible(False)
        columns_header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.cellClicked.connect(lambda r, _c: self.show_hotspot(r))
        self.table.currentCellChanged.connect(lambda r, _c, _pr, _pc: self.show_hotspot(r) if r >= 0 else None)
        col.addWidget(self.table)
        layout.addWidget(box)

        self.summary_box = QGroupBox("Summary (summary.json)")
        self.summary_form = QFormLayout(self.summary_box)
        layout.addWidget(self.summary_box)

        row = QHBoxLayout()
        self.export_button = QPushButton("Export GeoJSON…")
        self.export_button.setToolTip("the regions at the current threshold, in predict's QuPath GeoJSON schema")
        self.export_button.clicked.connect(self._ask_export)
        self.screenshot_button = QPushButton("Screenshot…")
        self.screenshot_button.clicked.connect(self._ask_screenshot)
        self.speak_button = QPushButton("Read aloud")  # the same words as `predict --speak` (espeak-ng)
        self.speak_button.clicked.connect(self.read_aloud)
        row.addWidget(self.export_button)
        row.addWidget(self.screenshot_button)
        row.addWidget(self.speak_button)
        layout.addLayout(row)
        layout.addStretch(1)
        self._set_enabled(False)

    def _legend(self) -> QWidget:
        """The colour legend: the heatmap's colour map from p = 0 to 1, and what cyan outlines are."""
        from qtpy.QtGui import QImage, QPixmap

        box = QGroupBox("Legend")
        col = QVBoxLayout(box)
        rgb = legend_rgb(200, 14)
        self._legend_pixels = rgb.tobytes()  # QImage does not own its buffer
        image = QImage(self._legend_pixels, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1],
                       QImage.Format.Format_RGB888)
        ramp = QLabel()
        ramp.setPixmap(QPixmap.fromImage(image))
        row = QHBoxLayout()
        row.addWidget(QLabel("p = 0"))
        row.addWidget(ramp)
        row.addWidget(QLabel("1"))
        col.addLayout(row)
        self.legend_label = QLabel("colour: tumour probability of each patch (transparent: not scored); "
                                   "<span style='color:#00b8d4'><b>cyan</b></span> outline: regions of p ≥ threshold")
        self.legend_label.setWordWrap(True)
        col.addWidget(self.legend_label)
        return box

    def _set_enabled(self, on: bool) -> None:
        for w in (self.slider, self.rank_by, self.table, self.export_button, self.speak_button):
            w.setEnabled(on)

    # -- binding to the reader's layers ---------------------------------------------------------------
    @staticmethod
    def _role(layer: Any) -> str | None:
        meta = getattr(layer, "metadata", None) or {}
        info = meta.get("wsiscan") if isinstance(meta, dict) else None
        return info.get("role") if isinstance(info, dict) else None

    def _on_layers_changed(self, event: Any = None) -> None:
        """Follow the newest heatmap layer; drop references to removed layers."""
        if self.regions_layer is not None and self.regions_layer not in self.viewer.layers:
            self.regions_layer = None
        inserted = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        if inserted is not None and self._role(inserted) == "heatmap":
            self.bind(inserted)
            return
        if self.heatmap_layer is not None and self.heatmap_layer in self.viewer.layers:
            return
        heatmaps = [layer for layer in self.viewer.layers if self._role(layer) == "heatmap"]
        if heatmaps:
            self.bind(heatmaps[-1])
        elif self.heatmap_layer is not None:
            self.heatmap_layer = self.result = self.cells = None
            self._set_enabled(False)

    def bind(self, layer: Any) -> None:
        """Review the result behind heatmap ``layer``: summary, threshold (predict's), regions."""
        self.heatmap_layer = layer
        self.result = open_result(layer.metadata["wsiscan"]["slide_dir"])
        if self.regions_layer is not None and self.regions_layer.metadata.get("wsiscan", {}).get("slide_dir") != str(
                self.result.slide_dir):
            self.regions_layer = None  # that slide's outlines stay as they are; this slide gets its own
        self.cells = np.asarray(layer.data, np.float32)
        slide = [lyr for lyr in self.viewer.layers if self._role(lyr) == "slide"
                 and lyr.metadata["wsiscan"].get("slide_dir") == str(self.result.slide_dir)]
        where = slide[0].metadata["wsiscan"].get("description", "") if slide else ""
        self.source_label.setText(f"<b>{self.result.slide_id}</b><br>{where}")
        while self.summary_form.rowCount():
            self.summary_form.removeRow(0)
        for label, value in summary_rows(self.result.summary):
            self.summary_form.addRow(f"{label}:", QLabel(value))
        self.smoke_label.setVisible(is_smoke_result(self.result.summary))
        self._set_enabled(True)
        self.set_threshold(self.result.threshold)

    # -- threshold and regions -------------------------------------------------------------------------
    def _on_slider(self, value: int) -> None:
        self.threshold_label.setText(f"{value / SLIDER_STEPS:.2f}")
        self._debounce.start()

    def set_threshold(self, threshold: float) -> None:
        """Threshold the heatmap now: regions, their outline layer and the hotspot table."""
        self.threshold = float(np.clip(threshold, 0.0, 1.0))
        self.slider.blockSignals(True)
        self.slider.setValue(round(self.threshold * SLIDER_STEPS))
        self.slider.blockSignals(False)
        self.threshold_label.setText(f"{self.threshold:.2f}")
        if self.result is None or self.cells is None:
            return
        self.regions = threshold_regions(self.result, self.cells, self.threshold)
        # the summary's names: region area = the outlined polygons, tumour area = cells >= threshold
        area = sum(r["area_mm2"] for r in self.regions)
        finite = np.isfinite(self.cells)
        tumour_mm2 = int((finite & (self.cells >= self.threshold)).sum()) * self.result.frame.cell_um**2 / 1e6
        self.regions_label.setText(f"p ≥ {self.threshold:.2f}: {len(self.regions)} region(s), region area "
                                   f"{area:.3f} mm², tumour area {tumour_mm2:.3f} mm²")
        self._draw_regions(self.result)
        self._refresh_hotspots()

    def _outline_width_um(self) -> float:
        zoom = _camera(self.viewer).zoom
        return OUTLINE_WIDTH_SCREEN_PX / zoom if zoom > 0 else 1.0

    def _draw_regions(self, result: WsiscanResult) -> None:
        rings = region_rings_um(self.regions, l0_mpp=result.l0_mpp)
        name = f"{result.slide_id} regions"
        layer = self.regions_layer
        if layer is None:
            layer = self.viewer.add_shapes(name=name, units=("um", "um"), opacity=1.0,
                                           metadata={"wsiscan": {"role": "regions",
                                                                 "slide_dir": str(result.slide_dir)}})
            self.regions_layer = layer
            self.viewer.layers.selection.active = self.heatmap_layer
        layer.data = []
        if rings:
            layer.add(rings, shape_type="polygon", edge_width=self._outline_width_um(), edge_color=OUTLINE_COLOR,
                      face_color="transparent")
        self._outline_zoom = _camera(self.viewer).zoom
        layer.name = f"{name} p ≥ {self.threshold:.2f}"

    def _on_zoom(self, event: Any = None) -> None:
        """Keep outlines about 2 screen px wide whatever the zoom (re-width only on a real change)."""
        zoom = _camera(self.viewer).zoom
        layer = self.regions_layer
        if layer is None or layer.nshapes == 0 or self._outline_zoom <= 0:
            return
        if max(zoom / self._outline_zoom, self._outline_zoom / zoom) > 1.5:
            layer.edge_width = self._outline_width_um()
            self._outline_zoom = zoom

    # -- hotspots ---------------------------------------------------------------------------------------------
    def _refresh_hotspots(self) -> None:
        if self.result is None:
            return
        by = "max" if self.rank_by.currentIndex() == 0 else "mean"
        self.hotspots = rank_hotspots(self.regions, l0_mpp=self.result.l0_mpp, by=by, top_n=TOP_N_HOTSPOTS)
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.setRowCount(len(self.hotspots))
        for row, h in enumerate(self.hotspots):
            for col, text in enumerate((str(h.rank), f"{h.max_probability:.3f}", f"{h.mean_probability:.3f}",
                                        f"{h.area_mm2:.4f}")):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.table.blockSignals(False)

    def show_hotspot(self, row: int) -> None:
        """Centre and zoom the view on hotspot ``row`` of the table."""
        if not 0 <= row < len(self.hotspots):
            return
        h = self.hotspots[row]
        min_extent_um = 4 * self.result.frame.cell_um if self.result is not None else 200.0
        centre, zoom = view_for_bbox(h.bbox_um, _canvas_size_px(self.viewer), min_extent_um=min_extent_um)
        camera = _camera(self.viewer)
        camera.center = centre
        camera.zoom = zoom

    # -- export ------------------------------------------------------------------------------------------------
    def export_geojson(self, path: str | Path) -> Path:
        """Write the current threshold's regions in predict's GeoJSON schema."""
        if self.result is None:
            raise RuntimeError("no wsiscan result is open")
        return export_geojson(self.result, self.regions, path, threshold=self.threshold)

    def save_screenshot(self, path: str | Path, *, canvas_only: bool = True) -> Path:
        self.viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
        return Path(path)

    def read_aloud(self) -> None:
        from wsiscan.speech import read_summary_aloud

        if self.result is None:
            return
        summary = self.result.summary
        problem = (read_summary_aloud(summary.to_json()) if summary is not None
                   else "no summary.json yet: the run has not finished; run `wsiscan predict` on the slide again")
        if problem:
            self.regions_label.setText(problem)

    def _ask_export(self) -> None:
        if self.result is None:
            return
        default = self.result.slide_dir / exported_geojson_name(self.threshold)
        path, _ = QFileDialog.getSaveFileName(self, "Export regions as GeoJSON", str(default), "GeoJSON (*.geojson)")
        if path:
            self.export_geojson(path)
            self.regions_label.setText(f"{len(self.regions)} region(s) written to {path}")

    def _ask_screenshot(self) -> None:
        folder = self.result.slide_dir if self.result is not None else Path.cwd()
        path, _ = QFileDialog.getSaveFileName(self, "Save screenshot", str(folder / "screenshot.png"), "PNG (*.png)")
        if path:
            self.save_screenshot(path)


# -- what `wsiscan view` runs (kept here: this is the plugin's only Qt module) ---------------------------------
def open_review(viewer: "napari.viewer.Viewer", path: str | Path, *, source: str = "auto",
                threshold: float | None = None) -> HeatmapReviewWidget:
    """Add the result at ``path`` to ``viewer`` with the review panel docked; returns the panel."""
    from ._layers import layer_data

    for data, kwargs, kind in layer_data(path, source=source):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = HeatmapReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Heatmap review", area="right")
    from ._explain_widget import HotspotExplainPanel  # the hotspot's Grad-CAM panels, beside the review panel

    viewer.window.add_dock_widget(HotspotExplainPanel(viewer, review=widget), name="Grad-CAM of hotspot", area="right")
    viewer.canvas.overlays.scale_bar.visible = True
    if threshold is not None:
        widget.set_threshold(threshold)
    viewer.reset_view()
    return widget


def save_window_screenshot(viewer: "napari.viewer.Viewer", path: str | Path, *,
                           size_px: tuple[int, int] = (1400, 900)) -> Path:
    """Draw the whole window (canvas and panels) at ``size_px`` (width, height) and save it as PNG."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is None:
        raise RuntimeError("no Qt application is running; open a napari viewer first")
    viewer.window.resize(*size_px)
    for _ in range(2):  # the multiscale level is chosen on draw: draw, let it load, draw again
        for _ in range(20):
            app.processEvents()
        viewer.reset_view()
        viewer.screenshot(canvas_only=True, flash=False)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(p), canvas_only=False, flash=False)
    return p
