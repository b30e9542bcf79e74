"""Render the module's .ui offscreen with Qt (PySide6) to the PNG docs/slicer.md shows.

ctk/qMRML widgets fall back to their Qt base classes, so node selectors render as empty boxes.
    QT_QPA_PLATFORM=offscreen python scripts/render_panel_screenshot.py
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QFile  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path = ROOT / "Resources" / "Screenshots" / "panel.png") -> None:
    app = QApplication.instance() or QApplication(sys.argv)
    handle = QFile(str(ROOT / "SyntheticContrast" / "Resources" / "UI" / "SyntheticContrast.ui"))
    handle.open(QFile.ReadOnly)
    widget = QUiLoader().load(handle)
    widget.resize(460, widget.sizeHint().height())
    widget.show()
    app.processEvents()
    out.parent.mkdir(parents=True, exist_ok=True)
    widget.grab().save(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
