"""Render the module's panel to the PNG docs/slicer.md shows: the widget class itself on real Qt widgets built from
the .ui (tests/qt_panel.py, offscreen), after a real synthesis of a held-out phantom started by clicking Apply, beside
the NCCT and the sCECT that synthesis put into the scene.

    python scripts/render_panel_screenshot.py

The views are drawn from the scene's volume nodes by the engine's figure code, not by Slicer's slice widgets, which
slicer-core does not have.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "SyntheticContrast")]

import slicer_harness  # noqa: E402


def main(out: Path = ROOT / "Resources" / "Screenshots" / "panel.png", slices: int = 24) -> Path:
    import numpy as np
    from PIL import Image
    from PySide6 import QtWidgets

    import qt_panel
    from SyntheticContrastLib import mrml
    from SyntheticContrastLib.measurement.figures import side_by_side
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    with slicer_harness.installed(real_qt=True) as harness:
        qt_panel.application()
        module = slicer_harness.import_module_fresh()
        parent = QtWidgets.QWidget()
        QtWidgets.QVBoxLayout(parent)
        widget = module.SyntheticContrastWidget(parent)
        widget.setup()
        ui, p = widget.ui, widget._parameterNode
        ncct = make_phantom(9001, PhantomSpec(slices=slices)).ncct
        mrml.node_from_volume(harness.scene, ncct, "Phantom 9001 NCCT")
        ui.inputSelector.setCurrentIndex(ui.inputSelector.findText("Phantom 9001 NCCT"))
        ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findText("cpu"))
        qt_panel.click(ui.applyButton)
        deadline = time.time() + 600
        while p.outputVolume is None or ui.cancelButton.enabled:
            if time.time() > deadline:
                raise TimeoutError(ui.statusLabel.text)
            for timer in slicer_harness.QTimer.instances:
                timer.fire()
            time.sleep(0.1)
        parent.resize(480, parent.sizeHint().height())
        parent.show()
        qt_panel.application().processEvents()
        with tempfile.TemporaryDirectory() as tmp:
            panel_png, views_png = Path(tmp) / "panel.png", Path(tmp) / "views.png"
            parent.grab().save(str(panel_png))
            scect = mrml.volume_from_node(p.outputVolume)
            k = slices // 2
            side_by_side([ncct.array[k], scect.array[k]], ["NCCT", "sCECT (SYNTHETIC)"], views_png,
                         f"{p.outputVolume.GetName()}, slice {k}", pixel_mm=float(ncct.spacing[0]))
            left, right = Image.open(panel_png).convert("RGB"), Image.open(views_png).convert("RGB")
            scale = left.height / right.height
            right = right.resize((int(right.width * scale), left.height))
            canvas = Image.new("RGB", (left.width + right.width, left.height), "white")
            canvas.paste(left, (0, 0))
            canvas.paste(right, (left.width, 0))
            out.parent.mkdir(parents=True, exist_ok=True)
            canvas.save(out)
        widget.cleanup()
        assert np.isfinite(scect.array).all()
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
