"""The Slicer module driven as a user drives it: real clicks in an offscreen slice view on slicer-core's MRML,
the synthesis CLI as a real child process followed by the module's QTimer, and the .ui's scene wiring."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by the test extra")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found is not slicer-core", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

import slicer_harness  # noqa: E402
from conftest import chest_like  # noqa: E402
from SyntheticContrastLib import mrml  # noqa: E402
from SyntheticContrastLib.io.reading import write_volume  # noqa: E402
from SyntheticContrastLib.io.volume import Volume  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def harness():
    with slicer_harness.installed() as h:
        h.module = slicer_harness.import_module_fresh()
        h.logic = h.module.SyntheticContrastLogic()
        yield h
        h.logic.cancelSynthesis()


def _volume_node(name="Patient CT", shape=(20, 32, 32), value_offset=0.0):
    vol = Volume(chest_like(shape) + value_offset, (1.0, 1.0, 2.5), (-16.0, -16.0, 0.0))
    return mrml.node_from_volume(slicer.mrmlScene, vol, name)


def _defined_indices(node):
    """Control points a click has placed (not the preview point that follows the mouse), straight from MRML."""
    return [i for i in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(i) == node.PositionDefined]


def _defined(node):
    return [np.array(node.GetNthControlPointPositionWorld(i)) for i in _defined_indices(node)]


def _labels(node):
    return [node.GetNthControlPointLabel(i) for i in _defined_indices(node)]


# --- R1: the .ui hands the scene to every qMRML widget -----------------------------------------------------

def test_ui_connects_the_scene_to_every_qmrml_widget():
    tree = slicer_harness.ui_tree()
    root = tree.getroot().find("widget")
    assert root.get("class") == "qMRMLWidget"
    mrml_widgets = {w.get("name") for w in root.iter("widget") if w is not root and w.get("class", "").startswith(("qMRML", "qSlicer"))}
    assert {"inputSelector", "referenceSelector", "cnrTableView"} <= mrml_widgets
    wired = {
        c.findtext("receiver")
        for c in tree.getroot().iter("connection")
        if c.findtext("sender") == root.get("name") and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
        and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    assert mrml_widgets <= wired, f"widgets that never get the scene: {sorted(mrml_widgets - wired)}"


# --- R9: the path fields browse for what they hold ------------------------------------------------------

def test_path_fields_browse_for_a_folder_and_for_model_cards():
    root = slicer_harness.ui_tree().getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}

    def prop(name, prop_name):
        element = widgets[name].find(f"property[@name='{prop_name}']")
        return "" if element is None else "".join(element.itertext())

    assert "ctkPathLineEdit::Dirs" in prop("studyDirLineEdit", "filters")
    assert "ctkPathLineEdit::Files" not in prop("studyDirLineEdit", "filters")
    assert widgets["modelComboBox"].get("class") == "QComboBox"  # the model store by name, and "Install from file..."
    assert not prop("modelComboBox", "SlicerParameterName")  # a dynamic list: wired by the widget, not bound as a Choice


# --- R2: "Add lymph node" clicks land in that lesion's line --------------------------------------------------

def test_two_clicks_after_add_lymph_node_land_in_that_line(harness):
    view = harness.slice_view()
    harness.logic.startLymphNodeLine()
    line = harness.scene.GetFirstNodeByName("LN1")
    a, b = np.array([10.0, 20.0, 30.0]), np.array([22.0, 20.0, 30.0])
    view.click(a)
    view.click(b)
    points = _defined(line)
    assert len(points) == 2, "the clicks did not land in the lesion line"
    np.testing.assert_allclose(points[0], a, atol=1.0)  # one pixel is 1 mm in this view
    np.testing.assert_allclose(points[1], b, atol=1.0)
    assert not slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode", harness.scene), "a stray point list was made"
    lesions = mrml.rois_from_markups(harness.scene)["lesions"]
    assert [lesion["id"] for lesion in lesions] == ["LN1"]
    assert harness.interaction.GetCurrentInteractionMode() != harness.interaction.Place  # place mode ended


def test_second_lymph_node_gets_its_own_line(harness):
    view = harness.slice_view()
    harness.logic.startLymphNodeLine()
    view.click((0.0, 0.0, 30.0))
    view.click((8.0, 0.0, 30.0))
    harness.logic.startLymphNodeLine()
    view.click((40.0, 10.0, 35.0))
    view.click((46.0, 10.0, 35.0))
    first, second = harness.scene.GetFirstNodeByName("LN1"), harness.scene.GetFirstNodeByName("LN2")
    assert len(_defined(first)) == len(_defined(second)) == 2
    np.testing.assert_allclose(_defined(second)[0], (40.0, 10.0, 35.0), atol=1.0)


# --- R13: reference points: the click gets the label; a cancelled placement leaves nothing behind ----------------

def test_reference_point_click_is_labelled_and_replaces_the_older_one(harness):
    view = harness.slice_view()
    harness.logic.startReferencePoint("dta")
    view.click((-25.0, 40.0, 30.0))
    harness.logic.startReferencePoint("dta")
    view.click((-24.0, 41.0, 30.0))
    points = mrml.reference_points_node(harness.scene)
    assert _labels(points) == ["DTA"]
    np.testing.assert_allclose(_defined(points)[0], (-24.0, 41.0, 30.0), atol=1.0)


def test_cancelled_reference_placement_does_not_relabel_the_next_point(harness):
    view = harness.slice_view()
    harness.logic.startReferencePoint("dta")
    harness.interaction.SetCurrentInteractionMode(harness.interaction.ViewTransform)  # the user pressed Esc
    harness.logic.startReferencePoint("right_fat")
    view.click((-140.0, 0.0, 30.0))
    points = mrml.reference_points_node(harness.scene)
    assert _labels(points) == ["Right fat"]
    view.click((140.0, 0.0, 30.0))  # not in place mode any more: no point, and nothing relabelled
    assert _labels(points) == ["Right fat"]


# --- R3 and R15: blinded reading -----------------------------------------------------------------------------

def _reading_study(tmp_path, cases=2, scale=None):
    from SyntheticContrastLib.readerstudy.package import write_plan

    entries = []
    for k in range(cases):
        paths = {}
        for role, offset in (("ncct", 0.0), ("scect", 80.0), ("cect", 100.0)):
            path = tmp_path / "data" / f"Mueller_Hans_{k}_{role}.nrrd"
            write_volume(Volume(chest_like((8, 32, 32), seed=k) + offset, (1.0, 1.0, 2.5), (-16.0, -16.0, 0.0)), path)
            paths[role] = str(path)
        rois = {"format": "synthetic-contrast-rois/1", "coordinate_system": "LPS", "lesions": [
            {"id": "LN1", "center": [0.0, 0.0, 10.0], "short_axis_mm": 8.0}], "references": {}}
        roi_path = tmp_path / "data" / f"case{k}_rois.json"
        roi_path.write_text(json.dumps(rois))
        entries.append({"id": f"case{k}", **paths, "truth": str(roi_path)})
    study = {"format": "synthetic-contrast-reader-study/1", "cases": entries, "readers": ["R1"], "seed": 5}
    if scale:
        study["rating_scale"] = scale
    study_file = tmp_path / "study_input.json"
    study_file.write_text(json.dumps(study))
    write_plan(study_file, tmp_path / "study")
    return tmp_path / "study"


def _start_reading(harness, study_dir):
    p = harness.logic.getParameterNode()
    p.readingStudyDir, p.readingReader, p.readingSession, p.readingRating = study_dir, "R1", 1, 4.0
    return harness.logic.startReading(p)


def _saved_marks(study_dir):
    records = [json.loads(f.read_text()) for f in (study_dir / "readers" / "marks" / "R1" / "session1").glob("*.json") if f.name != "session.json"]
    return [m for r in records for m in r["marks"]]


def test_reading_mark_placed_by_click_is_saved(harness, tmp_path):
    study_dir = _reading_study(tmp_path)
    _start_reading(harness, study_dir)
    view = harness.slice_view()
    harness.logic.startReadingMark()
    view.click((3.0, -4.0, 10.0))
    marks = _saved_marks(study_dir)
    assert len(marks) == 1, "the click was not saved to the session"
    np.testing.assert_allclose(marks[0]["point_lps"], (-3.0, 4.0, 10.0), atol=1.0)  # LPS on disk
    assert marks[0]["rating"] == 4
    p = harness.logic.getParameterNode()
    p.readingRating = 2.0
    harness.logic.rerateLastMark(p)
    assert _saved_marks(study_dir)[0]["rating"] == 2


def test_a_study_on_a_0_to_100_scale_is_read_in_the_panel_on_that_scale(harness, tmp_path):
    """The rating spin box takes the study's scale when the session starts; a click saves the rating as set."""
    import types

    study_dir = _reading_study(tmp_path, scale=[0, 100])
    widget = harness.module.SyntheticContrastWidget.__new__(harness.module.SyntheticContrastWidget)
    widget.logic, widget._parameterNode = harness.logic, harness.logic.getParameterNode()
    widget.ui = types.SimpleNamespace(ratingSpinBox=types.SimpleNamespace(minimum=1.0, maximum=4.0), readingStatusLabel=types.SimpleNamespace(text=""))
    widget._setReadingText = lambda text: setattr(widget.ui.readingStatusLabel, "text", text)
    p = widget._parameterNode
    p.readingStudyDir, p.readingReader, p.readingSession, p.readingRating = study_dir, "R1", 1, 3.0
    widget.onStartReading()
    assert (widget.ui.ratingSpinBox.minimum, widget.ui.ratingSpinBox.maximum) == (0.0, 100.0)
    p.readingRating = 62.5
    harness.logic.startReadingMark()
    harness.slice_view().click((3.0, -4.0, 10.0))
    assert [m["rating"] for m in _saved_marks(study_dir)] == [62.5]
    p.readingRating = 120.0  # beyond the scale: refused, the saved rating stays
    with pytest.raises(ValueError, match="scale 0 to 100"):
        harness.logic.rerateLastMark(p)
    assert [m["rating"] for m in _saved_marks(study_dir)] == [62.5]



def test_a_mark_placed_with_a_rating_off_the_scale_is_refused_on_screen_and_never_saved_later(harness, tmp_path):
    """D4: the refused click leaves no point behind, says why in a dialog, and the next valid click saves one mark
    with its own rating (the leftover point used to be saved then, with that later rating)."""
    study_dir = _reading_study(tmp_path)
    _start_reading(harness, study_dir)
    p, view = harness.logic.getParameterNode(), harness.slice_view()
    p.readingRating = 7.0  # off the paper's 1-4 scale, as a box reset to -inf..+inf lets a reader type
    harness.logic.startReadingMark()
    view.click((3.0, -4.0, 10.0))
    marks_node = harness.logic.reading._marks
    assert _saved_marks(study_dir) == [] and marks_node.GetNumberOfControlPoints() == 0
    assert [text for kind, text in harness.messages if kind == "error"] == [
        "The mark was not saved: rating must lie on this study's scale 1 to 4, got 7.0. Set a rating on the study's "
        "scale and place the mark again."]
    p.readingRating = 2.0
    harness.logic.startReadingMark()
    view.click((8.0, 5.0, 10.0))
    marks = _saved_marks(study_dir)
    assert [m["rating"] for m in marks] == [2.0] and marks_node.GetNumberOfControlPoints() == 1
    np.testing.assert_allclose(marks[0]["point_lps"], (-8.0, -5.0, 10.0), atol=1.0)


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    import slicer_harness
    with slicer_harness.installed() as h:
        module = slicer_harness.import_module_fresh()
        logic = module.SyntheticContrastLogic()
        p = logic.getParameterNode()
        p.readingStudyDir, p.readingReader, p.readingSession, p.readingRating = {study!r}, "R1", 1, 3.0
        logic.startReading(p)
        view = h.slice_view()
        logic.startReadingMark()
        view.click((5.0, 6.0, 10.0))
        os.kill(os.getpid(), signal.SIGKILL)  # a crash right after the click: nothing gets a chance to flush
""")


@pytest.mark.skipif(os.name == "nt", reason="SIGKILL is POSIX")
def test_reading_mark_survives_a_crash_and_is_shown_on_resume(harness, tmp_path):
    study_dir = _reading_study(tmp_path)
    child = subprocess.run([sys.executable, "-c", CHILD.format(tests=str(TESTS), study=str(study_dir))],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "SyntheticContrast"), str(TESTS)])})
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    marks = _saved_marks(study_dir)
    assert len(marks) == 1 and marks[0]["rating"] == 3
    _start_reading(harness, study_dir)  # resume in a fresh "Slicer"
    shown = [n for n in slicer.util.getNodesByClass("vtkMRMLMarkupsFiducialNode", harness.scene)
             if n.GetAttribute(mrml.ROLE_ATTRIBUTE) == "reading-marks"]
    assert len(shown) == 1 and len(_defined(shown[0])) == 1
    np.testing.assert_allclose(_defined(shown[0])[0], (5.0, 6.0, 10.0), atol=1.0)


def test_reading_scene_holds_no_file_path_or_patient_name(harness, tmp_path):
    study_dir = _reading_study(tmp_path)
    text = _start_reading(harness, study_dir)
    assert "Case " in text
    harness.scene.SetSaveToXMLString(1)
    harness.scene.Commit()
    xml = harness.scene.GetSceneXMLString()
    assert "Mueller" not in xml and str(tmp_path / "data") not in xml  # the study folder itself is the reader's own
    assert not slicer.util.getNodesByClass("vtkMRMLStorageNode", harness.scene)


def test_reading_without_a_study_folder_says_so(harness):
    p = harness.logic.getParameterNode()
    p.readingReader = "R1"
    with pytest.raises(ValueError, match="Choose the readers' folder"):
        harness.logic.startReading(p)  # the empty field reads as Path('.'), which must not count as chosen
    with pytest.raises(ValueError, match="Start a reading session first"):
        harness.logic.rerateLastMark(p)
    with pytest.raises(ValueError, match="Start a reading session first"):
        harness.logic.startReadingMark()


# --- R7: every button reports its errors in a dialog ----------------------------------------------------------

def test_every_button_goes_through_the_error_display(harness):
    import ast

    tree = ast.parse((ROOT / "SyntheticContrast" / "SyntheticContrast.py").read_text())
    direct = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
              and n.func.attr == "connect" and n.args and isinstance(n.args[0], ast.Constant)
              and n.args[0].value == "clicked(bool)" and not (isinstance(n.func.value, ast.Name) and n.func.value.id == "button")]
    assert not direct, f"buttons connected around _connect at lines {direct}"
    button = slicer_harness.Signal()
    button.connect = button.connect  # PythonQt style: button.connect("clicked(bool)", slot)
    harness.module.SyntheticContrastWidget._connect(button, "Could not do it.", lambda: harness.logic.rerateLastMark(harness.logic.getParameterNode()))
    button.emit(False)
    assert harness.messages and harness.messages[-1][0] == "error"
    assert "Could not do it." in harness.messages[-1][1] and "Start a reading session first" in harness.messages[-1][1]


# --- R5 and R10: the overlay ------------------------------------------------------------------------------------

def _show_in_views(harness, p):
    harness.logic.showLinkedViews(p)
    return [c for c in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", harness.scene) if c.GetBackgroundVolumeID() == p.inputVolume.GetID()]


def _overlay_shown(harness, p):
    """Turn the overlay on and return the voxels the NCCT view shows over it."""
    composites = _show_in_views(harness, p)
    p.showOverlay = True
    harness.logic.updateOverlay(p)
    return mrml.volume_from_node(harness.scene.GetNodeByID(composites[0].GetForegroundVolumeID())).array


def test_overlay_follows_a_new_synthesis_and_a_closed_scene(harness):
    p = harness.logic.getParameterNode()
    p.inputVolume, p.outputVolume = _volume_node("ncct"), _volume_node("ncct - sCECT (synthetic)", value_offset=100.0)
    np.testing.assert_allclose(_overlay_shown(harness, p), 100.0, atol=1e-3)
    p.outputVolume = _volume_node("second - sCECT (synthetic)", value_offset=40.0)  # a second synthesis
    np.testing.assert_allclose(_overlay_shown(harness, p), 40.0, atol=1e-3)

    harness.logic.sceneClosed()
    harness.scene.Clear(0)  # node IDs are reused after this
    p = harness.logic.getParameterNode()
    p.inputVolume, p.outputVolume = _volume_node("ncct"), _volume_node("ncct - sCECT (synthetic)", value_offset=7.0)
    np.testing.assert_allclose(_overlay_shown(harness, p), 7.0, atol=1e-3)


def test_parameter_changes_leave_the_users_foreground_alone(harness):
    p = harness.logic.getParameterNode()
    p.inputVolume, p.outputVolume = _volume_node("ncct"), _volume_node("ncct - sCECT (synthetic)", value_offset=100.0)
    composites = _show_in_views(harness, p)
    users_choice = _volume_node("PET")
    composites[0].SetForegroundVolumeID(users_choice.GetID())
    for stride in (2, 3, 4):  # unrelated panel edits
        p.stride = stride
        harness.logic.updateOverlay(p)
    assert composites[0].GetForegroundVolumeID() == users_choice.GetID()


# --- R11: one CNR table per case, numbers stay numbers ----------------------------------------------------------

def test_cnr_table_is_numeric_and_updated_in_place(harness):
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    case = make_phantom(5, PhantomSpec(size=256, slices=20, pixel_mm=1.4, slice_mm=5.0))
    p = harness.logic.getParameterNode()
    p.inputVolume = mrml.node_from_volume(harness.scene, case.ncct, "ncct")
    p.referenceVolume = mrml.node_from_volume(harness.scene, case.cect, "cect")
    annotations = json.loads(json.dumps(case.annotations))
    annotations["lesions"].append({"id": "OUT", "center": [900.0, 900.0, 900.0], "short_axis_mm": 8.0,  # off the image
                                   "references": {k: [900.0, 900.0, 900.0] for k in ("dta", "right_fat", "left_fat")}})
    mrml.markups_from_rois(harness.scene, annotations, p.inputVolume)
    table, message = harness.logic.computeCNR(p)
    assert "failed" in message
    cnr = table.GetTable().GetColumnByName("cnr")
    assert cnr.IsNumeric() and cnr.GetClassName() == "vtkDoubleArray"
    errors = table.GetTable().GetColumnByName("error")
    rows = {table.GetCellText(r, table.GetColumnIndex("lesion")): r for r in range(table.GetNumberOfRows())}
    assert np.isnan(cnr.GetValue(rows["OUT"])) and errors.GetValue(rows["OUT"])
    assert cnr.GetValue(rows[case.annotations["lesions"][0]["id"]]) > 0
    again, _ = harness.logic.computeCNR(p)
    assert again is table and len(slicer.util.getNodesByClass("vtkMRMLTableNode", harness.scene)) == 1


# --- D7/D8: ROIs, tables and circles belong to one case, and keep to it through an import ---------------------

def _two_patients(harness):
    """Patients A and B in one scene, each with its phantom's lymph-node ROIs, placed while its NCCT was chosen."""
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    cases = {}
    for name, seed in (("A", 5), ("B", 6)):
        case = make_phantom(seed, PhantomSpec(size=256, slices=20, pixel_mm=1.4, slice_mm=5.0))
        ncct = mrml.node_from_volume(harness.scene, case.ncct, f"patient {name} NCCT")
        annotations = json.loads(json.dumps(case.annotations))
        for lesion in annotations["lesions"]:
            lesion["id"] = f"{name}-{lesion['id']}"
        mrml.markups_from_rois(harness.scene, annotations, ncct)
        cases[name] = (ncct, [lesion["id"] for lesion in annotations["lesions"]])
    return cases


def _measured(table):
    return {table.GetCellText(r, table.GetColumnIndex("lesion")) for r in range(table.GetNumberOfRows())}


def test_cnr_measures_only_the_chosen_patients_lymph_nodes(harness, tmp_path):
    cases = _two_patients(harness)
    p = harness.logic.getParameterNode()
    tables = {}
    for name, (ncct, lesions) in cases.items():
        p.inputVolume = ncct
        tables[name], _ = harness.logic.computeCNR(p)
        assert _measured(tables[name]) == set(lesions)  # never the other patient's nodes
    assert tables["A"] is not tables["B"]
    p.inputVolume = cases["A"][0]
    harness.logic.exportROIs(str(tmp_path / "a.json"))
    exported = json.loads((tmp_path / "a.json").read_text())
    assert {lesion["id"] for lesion in exported["lesions"]} == set(cases["A"][1])


def test_a_saved_case_imported_into_a_scene_with_other_patients_keeps_its_own_rois_and_table(harness, tmp_path):
    """D8: node IDs change on import into a non-empty scene. References are remapped; an ID kept in an attribute
    would then point at whichever node took that ID."""
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    cases = _two_patients(harness)
    p = harness.logic.getParameterNode()
    p.inputVolume = cases["A"][0]
    harness.logic.computeCNR(p)
    cect = make_phantom(5, PhantomSpec(size=256, slices=20, pixel_mm=1.4, slice_mm=5.0)).cect
    scect = mrml.node_from_volume(harness.scene, cect, "patient A NCCT - sCECT (synthetic)")
    harness.logic.views.update_overlay(cases["A"][0], scect, True, 0.5)  # A's enhancement overlay, saved with it
    for node in slicer.util.getNodesByClass("vtkMRMLStorableNode", harness.scene):  # as Save writes each file
        storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
        if storage is None:
            continue
        if storage.GetScene() is None:
            harness.scene.AddNode(storage)
            node.SetAndObserveStorageNodeID(storage.GetID())
        storage.SetFileName(str(tmp_path / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node), node.GetName()
    harness.scene.SetURL(str(tmp_path / "saved.mrml"))
    assert harness.scene.Commit()
    saved_id = cases["A"][0].GetID()
    harness.scene.Clear(0)
    other = mrml.node_from_volume(harness.scene, _unrelated_volume(), "another patient")
    harness.scene.SetURL(str(tmp_path / "saved.mrml"))
    assert harness.scene.Import()
    (imported,) = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", harness.scene) if n.GetName() == "patient A NCCT"]
    assert other.GetID() == saved_id != imported.GetID()  # the other patient now holds the ID that A's NCCT had
    p = harness.logic.getParameterNode()
    p.inputVolume = imported
    table, _ = harness.logic.computeCNR(p)
    assert _measured(table) == set(cases["A"][1])
    tables = [t for t in slicer.util.getNodesByClass("vtkMRMLTableNode", harness.scene) if mrml.in_case(t, imported)]
    assert tables == [table]  # the saved table was found again, not a new one made beside it
    p.inputVolume = other
    with pytest.raises(ValueError, match="for another patient first"):
        harness.logic.computeCNR(p)  # the other patient has no ROIs: none of A's is lent to it
    overlays = [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", harness.scene)
                if n.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.OVERLAY_ROLE]
    assert len(overlays) == 1 and mrml.in_case(overlays[0], imported) and not mrml.in_case(overlays[0], other)
    assert harness.logic.views._overlay_node(other, None) is None  # A's overlay is never shown on the other patient


def _unrelated_volume():
    from SyntheticContrastLib.io.volume import Volume

    return Volume(np.full((20, 64, 64), -1000.0, np.float32), (1.4, 1.4, 5.0), (0.0, 0.0, 0.0))


# --- R14 -----------------------------------------------------------------------------------------------------

def test_nodes_of_class_does_not_leak_the_collection(harness):
    held = []

    class Scene:  # passes the real collection through and keeps it, to read its reference count afterwards
        def GetNodesByClass(self, cls):
            held.append(harness.scene.GetNodesByClass(cls))
            return held[-1]

    mrml.nodes_of_class(Scene(), "vtkMRMLScalarVolumeNode")
    assert held[0].GetReferenceCount() == 1  # only our Python reference is left


# --- out of process: the CLI child, its progress, cancel, and R6 re-entrancy ----------------------------------------

def _pump(harness, until, limit_s=120.0):
    """What Qt's event loop does for the module: fire its QTimer until ``until()``."""
    import time

    deadline = time.monotonic() + limit_s
    while not until():
        assert time.monotonic() < deadline, "the synthesis process did not finish in time"
        for timer in slicer_harness.QTimer.instances:
            timer.fire()
        time.sleep(0.05)


def test_synthesis_runs_out_of_process_and_names_the_output_from_the_input_at_start(harness, tiny_model_card):
    p = harness.logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume_node("Patient CT"), str(tiny_model_card), "cpu"
    before = harness.logic.panelState(p)["plan"]  # the planner's line before Apply, made without torch
    assert before.startswith("Plan: fits: ") and "available on cpu, batch 1" in before
    events, finished = [], []
    job = harness.logic.startSynthesis(p, events.append, lambda result, node: finished.append((result, node)))
    with pytest.raises(RuntimeError, match="already running"):
        harness.logic.startSynthesis(p, None, None)
    assert harness.logic.panelState(p)["canApply"] is False
    p.inputVolume.SetName("renamed meanwhile")
    _pump(harness, lambda: finished)
    result, node = finished[0]
    assert result.state == "done", result.message
    assert node.GetName() == "Patient CT - sCECT (synthetic)" and p.outputVolume.GetID() == node.GetID()
    assert node.GetAttribute("SyntheticContrast.synthetic") == "true"
    assert node.GetAttribute("SyntheticContrast.model_id") == "tiny-test"
    assert len(node.GetAttribute("SyntheticContrast.model_sha256")) == 64
    assert any(e["event"] == "progress" for e in events) and events[-1]["event"] == "done"
    kinds = [e["event"] for e in events]
    (plan,) = [e for e in events if e["event"] == "plan"]  # the child's own plan, which the panel then shows
    total = [e for e in events if e["event"] == "progress"][-1]["windows_total"]
    assert kinds.index("plan") < kinds.index("progress") and plan["line"].startswith("fits: ") and plan["seconds"] > 0
    assert f"batch 1, {total} windows" in plan["line"] and f"batch 1, {total} windows" in before
    assert not job.workdir.exists()
    assert harness.app.process_events_calls == 0


def test_the_model_choice_lists_the_store_with_card_summaries_and_installs_a_card(harness, tiny_model_card, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHETIC_CONTRAST_MODELS", str(tmp_path / "store"))
    choices = {c["name"]: c["tooltip"] for c in harness.logic.modelChoices()}
    assert list(choices) == ["demo_phantom_small"] and "DEMONSTRATION ONLY" in choices["demo_phantom_small"]
    p = harness.logic.getParameterNode()
    assert harness.logic.installModel(str(tiny_model_card), p) == "tiny-test" and p.model == "tiny-test"
    choices = {c["name"]: c["tooltip"] for c in harness.logic.modelChoices()}
    assert list(choices) == ["tiny-test", "demo_phantom_small"] and "user model tiny-test, sha256" in choices["tiny-test"]
    p.inputVolume, p.device = _volume_node("Patient CT"), "cpu"
    finished = []
    harness.logic.startSynthesis(p, None, lambda result, node: finished.append((result, node)))  # the child finds the store
    _pump(harness, lambda: finished)
    result, node = finished[0]
    assert result.state == "done", result.message
    assert node.GetAttribute("SyntheticContrast.model_id") == "tiny-test"


def test_the_panels_model_combo_installs_from_a_file_and_chooses_by_name(harness, tiny_model_card, tmp_path, monkeypatch):
    """The widget's own wiring of the combo (its items change at run time, so it is not bound by the wrapper)."""
    import types

    import qt

    monkeypatch.setenv("SYNTHETIC_CONTRAST_MODELS", str(tmp_path / "store"))
    monkeypatch.setattr(slicer.util, "mainWindow", lambda: None)
    widget = harness.module.SyntheticContrastWidget.__new__(harness.module.SyntheticContrastWidget)
    widget.logic, widget._parameterNode = harness.logic, harness.logic.getParameterNode()
    combo = qt.QComboBox()
    widget.ui = types.SimpleNamespace(modelComboBox=combo)
    combo.connect("currentIndexChanged(int)", widget.onModelChosen)
    widget._populateModels()
    assert combo.items == ["demo_phantom_small", "Install from file..."] and combo.currentIndex == 0
    assert "DEMONSTRATION ONLY" in combo.data[(0, qt.Qt.ToolTipRole)]
    p = widget._parameterNode
    qt.QFileDialog.answers.append(str(tiny_model_card))
    combo.select(1)  # "Install from file...", then the card in the file dialog
    assert p.model == "tiny-test" and combo.items == ["tiny-test", "demo_phantom_small", "Install from file..."]
    assert combo.itemText(combo.currentIndex) == "tiny-test" and "user model tiny-test" in combo.data[(0, qt.Qt.ToolTipRole)]
    combo.select(1)
    assert p.model == "demo_phantom_small"
    combo.select(2)  # the file dialog cancelled: nothing installed, the chosen model stays shown
    assert p.model == "demo_phantom_small" and combo.itemText(combo.currentIndex) == "demo_phantom_small" and combo.count == 3


def test_failed_synthesis_reports_the_clis_message_and_keeps_the_log(harness, tmp_path):
    bad = tmp_path / "model.json"
    bad.write_text("{not json")
    p = harness.logic.getParameterNode()
    p.inputVolume, p.model, p.device = _volume_node(), str(bad), "cpu"
    finished = []
    harness.logic.startSynthesis(p, None, lambda result, node: finished.append((result, node)))
    _pump(harness, lambda: finished)
    result, node = finished[0]
    assert result.state == "failed" and node is None
    assert str(bad) in result.message
    assert "Full log" in harness.logic.logText(result) and Path(result.log_path).exists()
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", harness.scene) if "synthetic" in n.GetName()]


def test_cancel_kills_the_running_child_and_leaves_nothing(harness):
    p = harness.logic.getParameterNode()
    p.inputVolume, p.device = _volume_node("big", shape=(48, 256, 256)), "cpu"  # the demo model: many windows
    events, finished = [], []
    job = harness.logic.startSynthesis(p, events.append, lambda result, node: finished.append((result, node)))
    pid = harness.logic.synthesis.runner._popen.pid
    _pump(harness, lambda: any(e["event"] == "progress" for e in events))  # the child is inside the network now
    result = harness.logic.cancelSynthesis()
    assert result.state == "cancelled" and result.message == "Cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone when cancel returns (2 s at most, by its deadline)
    assert finished and finished[0][0].state == "cancelled" and finished[0][1] is None
    assert not job.workdir.exists()
    assert not [n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode", harness.scene) if "synthetic" in n.GetName()]
    assert harness.logic.panelState(p)["canApply"] is True


# --- R4: the headless batch script keeps provenance in the header ------------------------------------------------------

def _batch_script():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        sys.modules.pop("slicer_batch_synthesize", None)
        import slicer_batch_synthesize
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return slicer_batch_synthesize


def test_batch_script_output_header_has_provenance(harness, tmp_path, tiny_model_card):
    slicer_batch_synthesize = _batch_script()
    src, out = tmp_path / "in", tmp_path / "out"
    write_volume(Volume(chest_like((20, 32, 32)), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), src / "case1.nii.gz")
    code = slicer_batch_synthesize.main([str(src), str(out), "--model", str(tiny_model_card), "--device", "cpu"])
    assert code == 0
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(out / "case1_sCECT_synthetic.nrrd"))
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    assert {"SyntheticContrast.synthetic", "SyntheticContrast.model_id", "SyntheticContrast.model_sha256"} <= keys
    assert reader.GetMetaData("SyntheticContrast.model_id") == "tiny-test"


def test_batch_script_gives_inputs_whose_names_differ_after_a_dot_their_own_outputs(harness, tmp_path, tiny_model_card):
    """D5: 'patient.A' and 'patient.B' both became 'patient': 5 inputs gave 3 outputs and the script said 0."""
    script = _batch_script()
    src, out = tmp_path / "in", tmp_path / "out"
    names = ["patient.A.nii.gz", "patient.B.nii.gz", "1.2.840.113619.2.55.nrrd", "1.2.840.113619.2.56.nrrd", "plain.mha"]
    for k, name in enumerate(names):
        write_volume(Volume(chest_like((20, 32, 32), seed=k), (0.7, 0.7, 2.5), (0.0, 0.0, 0.0)), src / name)
    assert script.main([str(src), str(out), "--model", str(tiny_model_card), "--device", "cpu"]) == 0
    outputs = sorted(p.name for p in out.glob("*_sCECT_synthetic.nrrd"))
    assert len(outputs) == 5 and "patient.A_sCECT_synthetic.nrrd" in outputs and "plain_sCECT_synthetic.nrrd" in outputs


@pytest.mark.parametrize("argv, code", [(["MISSING", "OUT"], 1), (["--no-such-flag"], 2)])
def test_batch_script_ends_slicer_with_an_error_code_whatever_goes_wrong(harness, tmp_path, argv, code):
    """D6: an error outside the per-case loop (a missing input folder, a bad flag) left `Slicer --no-main-window`
    running for ever; the script's ending must always reach slicer.app.exit with a non-zero code."""
    import runpy

    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    saved = sys.argv
    sys.argv = [str(ROOT / "scripts" / "slicer_batch_synthesize.py"), *argv]
    try:
        runpy.run_path(str(ROOT / "scripts" / "slicer_batch_synthesize.py"), run_name="__main__")
    finally:
        sys.argv = saved
    assert slicer.app.exit_code == code


# --- Slicer conventions -------------------------------------------------------------------------------------------

def test_a_script_loads_the_phantom_case_without_views(harness, monkeypatch):
    """Slicer --no-main-window has no layout manager: the script still gets the NCCT and CECT nodes and the ROIs."""
    from SyntheticContrastSlicer.sampledata import load_phantom_case

    monkeypatch.setattr(harness.app, "layoutManager", lambda: None)
    ncct, cect = load_phantom_case()
    assert ncct.GetName() == "Phantom9001 NCCT" and "not a patient" in cect.GetName()
    assert ncct.GetImageData().GetDimensions() == (512, 512, 48)
    assert slicer.util.getNodesByClass("vtkMRMLMarkupsLineNode", harness.scene)  # the lymph-node lines



def test_module_registers_the_phantom_in_sample_data_without_any_download(harness, monkeypatch):
    import types

    registered = []
    sample_data = types.ModuleType("SampleData")
    sample_data.SampleDataLogic = types.SimpleNamespace(registerCustomSampleDataSource=lambda **kw: registered.append(kw))
    monkeypatch.setitem(sys.modules, "SampleData", sample_data)
    parent = types.SimpleNamespace()
    harness.module.SyntheticContrast(parent)
    assert parent.categories == ["Image Synthesis"] and harness.module.HELP_URL in parent.helpText
    cmake = (Path(__file__).parents[1] / "CMakeLists.txt").read_text()
    (declared,) = re.findall(r'set\(EXTENSION_CATEGORY "([^"]+)"\)', cmake)
    assert declared == parent.categories[0]  # the Extensions Index lists the extension where the module says it is
    (signal, slot), = harness.app.connections
    assert signal == "startupCompleted()"
    slot()
    (source,) = registered
    assert source["uris"] == [] and callable(source["customDownloader"]) and Path(source["thumbnailFileName"]).is_file()


def test_dependencies_are_offered_once_and_never_replace_slicers_packages(harness, monkeypatch):
    import importlib.util

    from SyntheticContrastSlicer import dependencies

    assert dependencies.version_tuple("2.13.0+cpu") == (2, 13, 0) and dependencies.version_tuple("2.1.0a0") == (2, 1, 0)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "safetensors" else real_find_spec(name, *a))
    checker = dependencies.DependencyChecker()
    assert checker.install_plan() == ["safetensors>=0.4 with pip"]
    harness.confirm_answers = [False]
    with pytest.raises(RuntimeError, match="declined"):
        checker.ensure()
    # Asked again on the next Apply: a decline does not lock the user out until a restart.
    harness.confirm_answers = [True]
    text = checker.ensure()
    assert [kind for kind, _ in harness.messages].count("confirm") == 2
    assert "safetensors>=0.4" in harness.messages[0][1]
    (installed,) = [msg for kind, msg in harness.messages if kind == "pip_install"]
    assert installed[:2] == ["safetensors>=0.4", "-c"] and not [a for a in installed if "torch" in a]
    assert f"numpy=={np.__version__}" in Path(installed[2]).read_text().splitlines()
    assert text.startswith("torch ") and "picks the device" in text


def test_the_constraints_file_reaches_pip_whole_on_a_windows_path(harness, monkeypatch, tmp_path):
    """Slicer splits a string argument as a POSIX shell does: 'C:\\Users\\...' lost its backslashes, pip could not
    open the file, and nothing installed on Windows (D3). The path must arrive as one argument, exactly."""
    import importlib.util
    import tempfile

    from SyntheticContrastSlicer import dependencies

    windows_temp = tmp_path / "C:\\Users\\Jane Doe\\AppData\\Local\\Temp"  # a legal folder name here, too
    windows_temp.mkdir()
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(windows_temp))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tqdm" else real_find_spec(name, *a))
    harness.confirm_answers = [True]
    dependencies.DependencyChecker().ensure()
    (installed,) = [msg for kind, msg in harness.messages if kind == "pip_install"]
    constraints = installed[installed.index("-c") + 1]
    assert constraints == str(windows_temp / "SyntheticContrast-slicer-constraints.txt") and Path(constraints).is_file()


# --- issue 13 in the panel: samples, the SD map, the out-of-distribution warning ---------------------------------

def test_samples_bring_an_sd_map_node_and_its_overlay(harness, tiny_model_card):
    p = harness.logic.getParameterNode()
    p.inputVolume, p.model, p.device, p.samples = _volume_node("Patient CT"), str(tiny_model_card), "cpu", 2
    finished = []
    harness.logic.startSynthesis(p, None, lambda result, node: finished.append(result))
    _pump(harness, lambda: finished)
    assert finished[0].state == "done", finished[0].message
    sd = p.uncertaintyVolume
    assert sd is not None and sd.GetName() == "Patient CT - sCECT uncertainty SD (synthetic)"
    assert sd.GetAttribute("SyntheticContrast.map") == "uncertainty" and sd.GetAttribute("SyntheticContrast.synthetic") == "true"
    assert p.outputVolume.GetAttribute("SyntheticContrast.samples") == "2"
    harness.logic.views.show_linked([p.inputVolume, p.outputVolume], ["NCCT", "sCECT"])
    p.showUncertainty = True
    harness.logic.updateOverlay(p)
    over_scect = [c for c in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", harness.scene)
                  if c.GetBackgroundVolumeID() == p.outputVolume.GetID()]
    assert over_scect and all(c.GetForegroundVolumeID() == sd.GetID() for c in over_scect)
    p.showUncertainty = False
    harness.logic.updateOverlay(p)
    assert all(c.GetForegroundVolumeID() is None for c in over_scect)


def test_out_of_distribution_input_raises_the_panels_warning(harness, tmp_path):
    from test_uncertainty import real_ct_series
    from SyntheticContrastLib.io.reading import read_volume

    real = read_volume(real_ct_series(tmp_path / "ct"))
    p = harness.logic.getParameterNode()
    p.inputVolume, p.device = mrml.node_from_volume(harness.scene, real, "real CT"), "cpu"
    events, finished = [], []
    harness.logic.startSynthesis(p, events.append, lambda result, node: finished.append(result))
    _pump(harness, lambda: finished)
    assert finished[0].state == "done", finished[0].message
    (ood_event,) = [e for e in events if e["event"] == "ood"]
    assert ood_event["checked"] and any("body width" in f["message"] for f in ood_event["findings"])
    warning = harness.logic.panelState(p)["outOfDistribution"]
    assert warning.startswith("Do not trust this synthetic image") and "body width" in warning
    assert "body width" in p.outputVolume.GetAttribute("SyntheticContrast.ood")
    # The output is checked too: the demo model paints the back muscle of this real CT by hundreds of HU.
    (implausible,) = [e for e in events if e["event"] == "plausibility"]
    assert any("within 40 mm of the skin" in f["message"] for f in implausible["findings"])
    assert "its enhancement breaks what contrast can do" in warning and "within 40 mm of the skin" in warning
    (overlay,) = slicer.util.getNodesByClass("vtkMRMLLabelMapVolumeNode", harness.scene)
    assert overlay.GetAttribute("SyntheticContrast.synthetic") == "true" and overlay.GetAttribute("SyntheticContrast.map") == "plausibility"
    assert "implausible enhancement (synthetic)" in overlay.GetName()
    composites = slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode", harness.scene)
    assert all(c.GetLabelVolumeID() == overlay.GetID() for c in composites)


def test_cnr_table_gets_uncertainty_columns_from_the_sd_map(harness):
    from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

    case = make_phantom(5, PhantomSpec(size=256, slices=20, pixel_mm=1.4, slice_mm=5.0))
    p = harness.logic.getParameterNode()
    p.inputVolume = mrml.node_from_volume(harness.scene, case.ncct, "ncct")
    p.outputVolume = mrml.node_from_volume(harness.scene, case.cect, "ncct - sCECT (synthetic)")
    p.uncertaintyVolume = mrml.node_from_volume(harness.scene, case.cect.with_array(np.full(case.cect.array.shape, 6.0, np.float32)), "sd")
    mrml.markups_from_rois(harness.scene, case.annotations, p.inputVolume)
    table, _ = harness.logic.computeCNR(p)
    column = table.GetTable().GetColumnByName("cnr_uncertainty")
    assert column is not None and column.GetClassName() == "vtkDoubleArray"
    volumes = [table.GetCellText(r, table.GetColumnIndex("volume")) for r in range(table.GetNumberOfRows())]
    noise = table.GetTable().GetColumnByName("noise")
    for r, volume in enumerate(volumes):
        if volume == "sCECT (synthetic)":
            assert column.GetValue(r) == pytest.approx(np.hypot(6.0, 6.0) / noise.GetValue(r))
        else:
            assert np.isnan(column.GetValue(r))


def test_panel_has_the_samples_control_and_a_hidden_yellow_warning():
    root = slicer_harness.ui_tree().getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    label = widgets["oodLabel"]
    assert "background-color: #ffd966" in "".join(label.find("property[@name='styleSheet']").itertext())
    assert label.find("property[@name='visible']/bool").text == "false"
    assert "N-fold" in "".join(widgets["samplesSpinBox"].find("property[@name='toolTip']").itertext())
    assert "multiply the synthesis time by N" in "".join(widgets["samplesNoteLabel"].itertext())


def test_a_synthetic_volume_is_never_the_input_or_the_reference(harness):
    """D10: an sCECT could be chosen as the input (a synthetic image of a synthetic image) and as the Reference CECT
    (the model compared with itself)."""
    p = harness.logic.getParameterNode()
    ncct = _volume_node("Patient CT")
    fake = _volume_node("Patient CT - sCECT (synthetic)", value_offset=50.0)
    fake.SetAttribute("SyntheticContrast.synthetic", "true")
    p.inputVolume = fake
    state = harness.logic.panelState(p)
    assert state["canApply"] is False and "is a synthetic image" in state["applyHint"]
    with pytest.raises(ValueError, match="is a synthetic image and cannot be the input"):
        harness.logic.startSynthesis(p)
    p.inputVolume, p.outputVolume, p.referenceVolume = ncct, fake, fake
    with pytest.raises(ValueError, match="cannot be the reference CECT"):
        harness.logic.computeCNR(p)
    with pytest.raises(ValueError, match="cannot be the reference CECT"):
        harness.logic.showLinkedViews(p)
    assert harness.logic.panelState(p)["canApply"] is True
