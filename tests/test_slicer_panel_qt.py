"""The widget class itself on real Qt widgets built from the .ui (tests/qt_panel.py): real buttons clicked, real spin
boxes typed into, real combo boxes read, and a real synthesis started from the Apply button."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("PySide6")

import slicer_harness  # noqa: E402
from conftest import chest_like  # noqa: E402
from SyntheticContrastLib import mrml  # noqa: E402
from SyntheticContrastLib.io.volume import Volume  # noqa: E402


@pytest.fixture
def panel():
    with slicer_harness.installed(real_qt=True) as harness:
        import qt_panel
        from PySide6 import QtWidgets

        qt_panel.application()
        module = slicer_harness.import_module_fresh()
        parent = QtWidgets.QWidget()
        QtWidgets.QVBoxLayout(parent)
        widget = module.SyntheticContrastWidget(parent)
        widget.setup()
        harness.module, harness.widget, harness.parent = module, widget, parent
        try:
            yield harness
        finally:
            widget.cleanup()
            parent.deleteLater()


def _ct(scene, name="Patient CT", shape=(16, 32, 32)):
    return mrml.node_from_volume(scene, Volume(np.round(chest_like(shape)), (0.8, 0.8, 2.5), (0.0, 0.0, 0.0)), name)


def _type(spin_box, text: str) -> None:
    """Select the spin box's text and type, as a user does; Enter commits it."""
    from PySide6.QtCore import Qt
    from PySide6.QtTest import QTest

    spin_box.qt.selectAll()
    QTest.keyClicks(spin_box.qt, text)
    QTest.keyClick(spin_box.qt, Qt.Key_Return)


def test_the_panel_is_built_from_the_ui_as_real_widgets_and_starts_with_apply_disabled(panel):
    from PySide6 import QtWidgets

    ui = panel.widget.ui
    assert isinstance(ui.applyButton.qt, QtWidgets.QPushButton) and isinstance(ui.samplesSpinBox.qt, QtWidgets.QSpinBox)
    assert ui.applyButton.enabled is False and ui.applyButton.toolTip == "Select a non-contrast CT volume"
    models = [ui.modelComboBox.itemText(i) for i in range(ui.modelComboBox.count)]
    assert models[0] == "demo_phantom_small" and models[-1].startswith("Install") and ui.modelComboBox.currentText == models[0]
    assert ui.batchSpinBox.text == "auto" and panel.widget._parameterNode.batchSize == 0  # auto, the CLI's default


def test_choosing_the_input_in_the_real_node_combo_enables_apply_and_shows_the_plan(panel):
    ui, p = panel.widget.ui, panel.widget._parameterNode
    node = _ct(panel.scene)
    combo = ui.inputSelector
    combo.setCurrentIndex(combo.findText("Patient CT"))
    assert p.inputVolume is not None and p.inputVolume.GetID() == node.GetID()
    assert ui.applyButton.enabled is True and "Patient CT" in ui.applyButton.toolTip
    assert ui.planLabel.text.startswith("Plan: ")  # device auto: the GPU figure and the CPU's line


def test_typing_into_real_spin_boxes_and_choosing_in_real_combos_sets_the_parameters(panel):
    ui, p = panel.widget.ui, panel.widget._parameterNode
    _ct(panel.scene)
    _type(ui.samplesSpinBox, "3")
    _type(ui.batchSpinBox, "2")
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findText("cpu"))
    assert (p.samples, p.batchSize, p.device) == (3, 2, "cpu")
    plan = ui.planLabel.text
    assert plan.startswith("Plan: fits: ") and "available on cpu, batch 2" in plan and "windows" in plan
    p.samples = 5  # a change made elsewhere (a script, a loaded scene) shows in the widget
    assert ui.samplesSpinBox.value == 5


def test_clicking_apply_runs_the_synthesis_and_the_panel_reports_it(panel, tiny_model_card):
    import qt_panel

    ui, p = panel.widget.ui, panel.widget._parameterNode
    _ct(panel.scene)
    ui.inputSelector.setCurrentIndex(ui.inputSelector.findText("Patient CT"))
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findText("cpu"))
    p.model = str(tiny_model_card)
    qt_panel.click(ui.applyButton)
    assert ui.applyButton.enabled is False and ui.cancelButton.enabled is True
    deadline, shown = time.time() + 120, set()
    while p.outputVolume is None or ui.cancelButton.enabled:
        assert time.time() < deadline, ui.statusLabel.text
        for timer in slicer_harness.QTimer.instances:
            timer.fire()
        shown.add(ui.planLabel.text)
        time.sleep(0.05)
    assert ui.progressBar.value == 100 and "SYNTHETIC image, not acquired." in ui.statusLabel.text
    assert any(t.startswith("Plan: fits: ") and ", about " in t for t in shown)  # the child's own plan, with its time
    assert ui.planLabel.text.startswith("Plan: fits: ")  # after the run: the plan of the next Apply
    assert p.outputVolume.GetName() == "Patient CT - sCECT (synthetic)" and ui.applyButton.enabled is True
    assert panel.app.process_events_calls == 0


def test_leaving_and_entering_the_module_again_leaves_one_binding_and_the_widgets_still_work(panel):
    """D13: Slicer 5.6 and 5.8 do not disconnect the GUI on exit; the module does, so bindings do not pile up."""
    import qt_panel

    ui, widget = panel.widget.ui, panel.widget
    for _ in range(3):
        widget.exit()
        assert qt_panel.GuiBinding.connected == 0  # nothing of the panel stays attached while another module is shown
        widget.enter()
        assert qt_panel.GuiBinding.connected == 1
    _type(ui.samplesSpinBox, "4")
    assert widget._parameterNode.samples == 4


def test_the_rating_box_keeps_the_studys_scale_when_the_reader_comes_back_to_the_module(panel, tmp_path):
    """D4: Slicer's binding gives a float's spin box -inf..+inf on every connectGui; the panel puts the study's scale
    back, so a reader who leaves the module and returns cannot type a rating off the scale."""
    import qt_panel
    from test_slicer_clicks import _reading_study

    ui, widget = panel.widget.ui, panel.widget
    assert (ui.ratingSpinBox.minimum, ui.ratingSpinBox.maximum) == (1.0, 4.0)  # the paper's scale before a session
    p = widget._parameterNode
    p.readingStudyDir, p.readingReader = _reading_study(tmp_path, scale=[0, 100]), "R1"
    qt_panel.click(ui.startReadingButton)
    assert (ui.ratingSpinBox.minimum, ui.ratingSpinBox.maximum) == (0.0, 100.0)
    widget.exit()
    widget.enter()
    assert (ui.ratingSpinBox.minimum, ui.ratingSpinBox.maximum) == (0.0, 100.0)
    _type(ui.ratingSpinBox, "150")
    assert p.readingRating == 15.0  # the box refuses the digit that would leave the scale (unbounded, it took 150)
    _type(ui.ratingSpinBox, "62.5")
    assert p.readingRating == 62.5
