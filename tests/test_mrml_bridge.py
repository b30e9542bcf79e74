"""The MRML bridge on real MRML libraries (PyPI slicer-core): geometry, markups, CNR tables, layouts."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core is installed by the test extra")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found is not slicer-core", allow_module_level=True)

import SimpleITK as sitk  # noqa: E402

from conftest import chest_like  # noqa: E402
from SyntheticContrastLib import mrml  # noqa: E402
from SyntheticContrastLib.measurement.cnr import measure_cnr  # noqa: E402
from SyntheticContrastLib.phantom import PhantomSpec, make_phantom  # noqa: E402
from SyntheticContrastLib.measurement.rois import parse_rois  # noqa: E402
from SyntheticContrastLib.io.volume import Volume  # noqa: E402

OBLIQUE = tuple(sitk.VersorRigid3DTransform((0.1, -0.05, 0.2, 1.0)).GetMatrix())


@pytest.fixture
def scene():
    s = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(s)
    yield s
    colors.SetMRMLScene(None)


def test_volume_round_trip_keeps_geometry_and_voxels(scene):
    vol = Volume(chest_like((7, 12, 9)), (0.7, 0.8, 2.5), (-120.0, 35.5, -400.0), OBLIQUE)
    node = mrml.node_from_volume(scene, vol, "ncct")
    back = mrml.volume_from_node(node)
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-9)
    # The node's IJK-to-RAS puts voxel (i, j, k) at the LPS point with x and y negated.
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ras = m.MultiplyPoint((3, 5, 2, 1))[:3]
    lps = vol.index_to_physical((3, 5, 2))
    np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)


def test_synthetic_volume_is_named_marked_and_placed_beside_its_source(scene):
    src = mrml.node_from_volume(scene, Volume(chest_like((4, 8, 8)), (1, 1, 1), (0, 0, 0)), "Patient CT")
    sh = scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.GetSceneItemID(), "Study 1")
    sh.CreateItem(study, src)
    meta = {"SyntheticContrast.model_id": "demo", "SyntheticContrast.model_sha256": "ab" * 32, "SyntheticContrast.stride": "8"}
    out = mrml.add_synthetic_volume(scene, src, mrml.volume_from_node(src), meta)
    assert out.GetName() == "Patient CT - sCECT (synthetic)"
    assert out.GetAttribute("SyntheticContrast.synthetic") == "true"
    assert out.GetAttribute("SyntheticContrast.model_sha256") == "ab" * 32
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study
    assert (out.GetDisplayNode().GetWindow(), out.GetDisplayNode().GetLevel()) == (350, 50)


def test_markups_at_known_ras_points_give_the_expected_roi_json(scene):
    mrml.add_lesion_line(scene, (10, 20, 30), (14, 20, 30), "LN7")
    mrml.set_reference_point(scene, "dta", (-25, 40, 30))
    mrml.set_reference_point(scene, "right_fat", (-140, 0, 30))
    mrml.set_reference_point(scene, "left_fat", (140, 0, 30))
    mrml.set_reference_point(scene, "dta", (-24, 41, 30))  # moving a point does not duplicate it
    data = mrml.rois_from_markups(scene)
    assert data["coordinate_system"] == "LPS"
    assert data["lesions"] == [{"id": "LN7", "short_axis": [[-10, -20, 30], [-14, -20, 30]]}]
    assert data["references"] == {"dta": [24, -41, 30], "right_fat": [140, 0, 30], "left_fat": [-140, 0, 30]}
    (lesion,) = parse_rois(data)
    np.testing.assert_allclose(lesion.center, [-12, -20, 30])
    assert lesion.diameter_mm == pytest.approx(0.9 * 4)


def test_cnr_table_for_a_phantom_case(scene):
    case = make_phantom(5, PhantomSpec(size=256, slices=20, pixel_mm=1.4, slice_mm=5.0))
    ncct = mrml.node_from_volume(scene, case.ncct, "ncct")
    cect = mrml.node_from_volume(scene, case.cect, "cect")
    mrml.markups_from_rois(scene, case.annotations)
    lesions = parse_rois(mrml.rois_from_markups(scene))
    assert len(lesions) == len(case.annotations["lesions"])
    volumes = {"NCCT": mrml.volume_from_node(ncct), "CECT": mrml.volume_from_node(cect)}
    rows = measure_cnr(volumes, lesions)
    table = mrml.cnr_table(scene, rows)
    assert table.GetNumberOfRows() == 2 * len(lesions)
    cols = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert {"lesion", "volume", "cnr", "noise", "lesion_mean", "dta_sd", "lesion_area_mm2", "lesion_voxels"} <= set(cols)
    direct = measure_cnr({"NCCT": case.ncct, "CECT": case.cect}, parse_rois(case.annotations))
    cnr_col = cols.index("cnr")
    for r, row in enumerate(direct):
        assert float(table.GetCellText(r, cnr_col)) == pytest.approx(row["cnr"], rel=1e-3)
    curves = mrml.draw_measured_circles(scene, lesions[0])
    assert len(curves) == 4 and all(c.GetNumberOfControlPoints() == 48 for c in curves)
    # Each circle is the one CNR measures: centred on its point (LPS in the ROI file, RAS in the scene), of half
    # the lesion's diameter, in the axial plane, and locked so that a stray drag cannot move what was measured.
    lesion = lesions[0]
    centres = {"lesion": lesion.center, **lesion.references}
    for curve in curves:
        name = curve.GetName().split(" ", 1)[1].rsplit(" ROI", 1)[0]
        lps = np.asarray(centres[name], float)
        ras = np.array([-lps[0], -lps[1], lps[2]])
        points = np.array([curve.GetNthControlPointPosition(i) for i in range(48)])
        np.testing.assert_allclose(points.mean(axis=0), ras, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(points - ras, axis=1), lesion.diameter_mm / 2, rtol=1e-9)
        assert np.ptp(points[:, 2]) == 0 and curve.GetLocked() and curve.GetAttribute("SyntheticContrast.role") == "measured-circle"


def test_layout_xml_names_the_views():
    xml = mrml.layout_xml(["NCCT", "sCECT", "CECT"], coronal_row=True)
    root = ET.fromstring(xml)
    views = root.findall(".//view")
    assert [v.get("singletontag") for v in views] == mrml.view_names(3, True) == ["SCA0", "SCA1", "SCA2", "SCC0", "SCC1", "SCC2"]
    orientations = [v.find("property[@name='orientation']").text for v in views]
    assert orientations == ["Axial"] * 3 + ["Coronal"] * 3


def test_layout_registers_and_views_link(scene):
    layout = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    layout_id = mrml.register_layout(layout, ["NCCT", "sCECT"])
    assert layout.IsLayoutDescription(layout_id)
    nodes = [mrml.node_from_volume(scene, Volume(chest_like((4, 8, 8)), (1, 1, 1), (0, 0, 0)), n) for n in ("a", "b")]
    for name in mrml.view_names(2):
        comp = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        comp.SetLayoutName(name)
    link = mrml.show_linked(scene, nodes)
    comps = [c for c in mrml.nodes_of_class(scene, "vtkMRMLSliceCompositeNode")]
    assert [c.GetBackgroundVolumeID() for c in comps] == [n.GetID() for n in nodes]
    assert all(c.GetLinkedControl() for c in comps)
    mrml.apply_window(nodes[0], *mrml.WINDOW_PRESETS["lung"])  # a preset click, or a W/L drag (auto off)
    assert (nodes[1].GetDisplayNode().GetWindow(), nodes[1].GetDisplayNode().GetLevel()) == (1500, -600)
    nodes[1].GetDisplayNode().SetWindowLevel(350, 50)  # links both ways
    assert (nodes[0].GetDisplayNode().GetWindow(), nodes[0].GetDisplayNode().GetLevel()) == (350, 50)
    link.remove()
    nodes[0].GetDisplayNode().SetWindowLevel(400, 40)
    assert nodes[1].GetDisplayNode().GetWindow() == 350


def test_enhancement_overlay(scene):
    base = chest_like((4, 8, 8))
    ncct = mrml.node_from_volume(scene, Volume(base, (1, 1, 1), (0, 0, 0)), "ncct")
    scect = mrml.node_from_volume(scene, Volume(base + 100, (1, 1, 1), (0, 0, 0)), "ncct - sCECT (synthetic)")
    diff = mrml.enhancement_volume(scene, ncct, scect)
    assert "synthetic" in diff.GetName()
    np.testing.assert_allclose(mrml.volume_from_node(diff).array, 100, atol=1e-4)
    assert diff.GetDisplayNode().GetColorNodeID() == "vtkMRMLColorTableNodeRainbow"
