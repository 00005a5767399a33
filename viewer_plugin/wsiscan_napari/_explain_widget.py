"""The "Grad-CAM of hotspot" dock widget: attribution panels of a hotspot's top patches.

It follows the "Heatmap review" panel: selecting a hotspot in its table explains the
highest-probability patches inside that region with the model(s) the result was scored
with (:func:`wsiscan.explain.run.region_panels`) and shows one panel per patch (patch,
Grad-CAM map, overlay, probability) beside the view.  Qt lives here and in ``_widget``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QImage, QPixmap
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QScrollArea, QSpinBox, QVBoxLayout, QWidget

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["HotspotExplainPanel"]

MIN_PICTURE_HEIGHT_PX = 360  # room for about two patches' panels at the dock's usual width


def _pixmap(picture: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(picture[..., :3])
    h, w = rgb.shape[:2]
    pixels = rgb.tobytes()
    image = QImage(pixels, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())  # copy: QImage does not own ``pixels``, which goes away


class HotspotExplainPanel(QWidget):
    """Grad-CAM (and optionally integrated gradients) panels for the selected hotspot."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", review: Any = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.review = review if review is not None else self._find_review()
        self.panels: list[dict] = []
        self._models: dict[str, Any] = {}
        self._picture: QPixmap | None = None
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("top patches"))
        self.n_patches = QSpinBox()
        self.n_patches.setRange(1, 16)
        self.n_patches.setValue(4)
        row.addWidget(self.n_patches)
        self.with_ig = QCheckBox("integrated gradients")
        self.with_ig.setToolTip("also integrated gradients (slower: 16 steps per patch)")
        row.addWidget(self.with_ig)
        layout.addLayout(row)
        self.status = QLabel("select a hotspot in the Heatmap review table")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        self.pictures = QLabel()
        self.pictures.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        self.pictures.setMinimumWidth(1)  # the label follows the dock's width, not its pixmap's
        self.scroll_area = QScrollArea()  # not self.scroll: that is QWidget.scroll()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setMinimumHeight(MIN_PICTURE_HEIGHT_PX)
        self.scroll_area.setWidget(self.pictures)
        layout.addWidget(self.scroll_area, 1)
        if self.review is not None:
            self.review.table.currentCellChanged.connect(self._on_row)

    def _show_picture(self) -> None:
        """The panels scaled to the dock's width (smoothly), so a whole row is always in view."""
        if self._picture is None:
            self.pictures.clear()
            return
        viewport = self.scroll_area.viewport()
        if viewport is None:  # a QScrollArea makes its viewport; the Qt stubs allow None
            raise RuntimeError("the explanation panel's scroll area has no viewport")
        width = max(viewport.width() - 4, 100)
        self.pictures.setPixmap(self._picture.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, event: Any) -> None:
        super().resizeEvent(event)
        QTimer.singleShot(0, self._show_picture)  # after the scroll area's viewport has its new size

    def _find_review(self) -> Any:
        docks = getattr(self.viewer.window, "dock_widgets", {})
        found = [w for w in docks.values() if hasattr(w, "hotspots") and hasattr(w, "table")]
        return found[0] if found else None

    def _on_row(self, row: int, _col: int = 0, _prev_row: int = 0, _prev_col: int = 0) -> None:
        if row >= 0:
            self.explain_hotspot(row)

    def explain_hotspot(self, row: int) -> list[dict]:
        """Explain hotspot ``row`` of the review table now; returns the panels shown."""
        from wsiscan.errors import WsiscanError
        from wsiscan.explain.run import region_panels

        review = self.review
        if review is None or review.result is None or not 0 <= row < len(review.hotspots):
            return []
        hotspot = review.hotspots[row]
        region = review.regions[hotspot.region_index]["geometry"]
        slide_dir = review.result.slide_dir
        methods = ("gradcam", "ig") if self.with_ig.isChecked() else ("gradcam",)
        self.status.setText(f"explaining hotspot #{hotspot.rank} …")
        try:
            self.panels, self._models[str(slide_dir)] = region_panels(
                slide_dir, region, top_k=self.n_patches.value(), methods=methods,
                models=self._models.get(str(slide_dir)))
        except WsiscanError as exc:
            self.panels = []
            self.status.setText(f"cannot explain: {exc}")
            self._picture = None
            self._show_picture()
            return []
        self._picture = _pixmap(np.concatenate([p["picture"] for p in self.panels], axis=0))
        self._show_picture()
        self.status.setText(f"hotspot #{hotspot.rank}: {len(self.panels)} top patch(es), max p "
                            f"{max(p['probability'] for p in self.panels):.3f}")
        return self.panels
