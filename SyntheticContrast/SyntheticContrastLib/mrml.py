"""The MRML bridge, the one engine module that imports slicer/vtk: volume nodes, markups, tables, layouts.

Engine volumes are LPS (ITK/DICOM); MRML is RAS. Every conversion goes through ``LPS_TO_RAS`` here and
nowhere else. Runs on Slicer's own MRML in the application and on the PyPI ``slicer-core`` in tests.
"""

from __future__ import annotations

import datetime as _dt
import math
import xml.etree.ElementTree as ET

import numpy as np
import slicer  # noqa: F401  (loads the MRML libraries this bridge works with)
import vtk
from vtk.util import numpy_support

from .measurement.rois import ROI_FORMAT, LesionROI
from .io.volume import PROVENANCE_PREFIX, Volume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
WINDOW_PRESETS = {
    "mediastinal": (350.0, 50.0),
    "soft tissue": (400.0, 40.0),
    "lung": (1500.0, -600.0),
    "vascular": (1000.0, 200.0),
}
ROLE_ATTRIBUTE = "SyntheticContrast.role"
REFERENCE_LABELS = {"dta": "DTA", "right_fat": "Right fat", "left_fat": "Left fat"}
#: The node reference from a lesion line, a reference point list or a CNR table to the NCCT node of its case. A node
#: reference, not an attribute holding an ID: MRML remaps references when a scene is saved and reloaded or imported
#: into a scene that already holds other patients, and leaves attributes as they were.
CASE_REFERENCE = "SyntheticContrastCase"
OVERLAY_SOURCE_REFERENCE = "SyntheticContrastOverlaySource"  # from an enhancement overlay to the sCECT it shows


def assign_case(node, case) -> None:
    """Make ``node`` belong to the case whose NCCT is ``case`` (None: to no case)."""
    node.SetNodeReferenceID(CASE_REFERENCE, case.GetID() if case is not None else None)


def overlay_is_current(overlay, scect) -> bool:
    """Whether an enhancement overlay was made from this sCECT's present voxels."""
    source = overlay.GetNodeReference(OVERLAY_SOURCE_REFERENCE)
    image = scect.GetImageData()
    return (source is not None and source.GetID() == scect.GetID() and image is not None
            and overlay.GetAttribute("SyntheticContrast.overlayTime") == str(image.GetMTime()))


def in_case(node, case) -> bool:
    """Whether ``node`` belongs to ``case``; with ``case`` None, whether it belongs to no case."""
    own = node.GetNodeReference(CASE_REFERENCE)
    if case is None or own is None:
        return case is None and own is None
    return own.GetID() == case.GetID()
SYNTHETIC_NAME_SUFFIX = " - sCECT (synthetic)"
UNCERTAINTY_NAME_SUFFIX = " - sCECT uncertainty SD (synthetic)"
OVERLAY_ROLE = "enhancement-overlay"


# --- volumes ------------------------------------------------------------------------------------

def volume_from_node(node) -> Volume:
    """A scalar volume node as an engine Volume (LPS), voxels copied as float32 (z, y, x)."""
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"volume node {node.GetName()!r} has no image data")
    dims = image.GetDimensions()
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    array = scalars.reshape(dims[2], dims[1], dims[0]).astype(np.float32)
    ras_dir = vtk.vtkMatrix4x4()
    node.GetIJKToRASDirectionMatrix(ras_dir)
    d_ras = np.array([[ras_dir.GetElement(r, c) for c in range(3)] for r in range(3)])
    d_lps = LPS_TO_RAS @ d_ras
    origin_lps = LPS_TO_RAS @ np.array(node.GetOrigin())
    provenance = {name: node.GetAttribute(name) for name in node.GetAttributeNames() if name.startswith(PROVENANCE_PREFIX)}
    return Volume(array, tuple(node.GetSpacing()), tuple(origin_lps), tuple(d_lps.ravel()), provenance, source=node.GetName())


def node_from_volume(scene, volume: Volume, name: str, node=None):
    """Create (or fill) a scalar volume node with the Volume's voxels and exact IJK-to-RAS geometry."""
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    array = np.ascontiguousarray(volume.array, dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(array.ravel(), deep=True, array_type=vtk.VTK_FLOAT))
    node.SetAndObserveImageData(image)
    node.SetSpacing(*volume.spacing)
    node.SetOrigin(*(LPS_TO_RAS @ np.asarray(volume.origin, float)))
    d_ras = LPS_TO_RAS @ np.asarray(volume.direction, float).reshape(3, 3)
    matrix = vtk.vtkMatrix4x4()
    for r in range(3):
        for c in range(3):
            matrix.SetElement(r, c, d_ras[r, c])
    node.SetIJKToRASDirectionMatrix(matrix)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def add_synthetic_volume(scene, source_node, volume: Volume, metadata: dict, source_name: str | None = None):
    """Add the sCECT beside its source: synthetic name, provenance attributes, mediastinal window.

    ``source_name`` is the input's name when the run started, so renaming the input meanwhile cannot rename the output.
    """
    node = _add_marked_volume(scene, source_node, volume, metadata, (source_name or source_node.GetName()) + SYNTHETIC_NAME_SUFFIX)
    apply_window(node, *WINDOW_PRESETS["mediastinal"])
    return node


def add_uncertainty_volume(scene, source_node, volume: Volume, metadata: dict, source_name: str | None = None):
    """Add the sCECT's SD map: named as synthetic uncertainty, a colour map from 0 to 50 HU."""
    node = _add_marked_volume(scene, source_node, volume, metadata, (source_name or source_node.GetName()) + UNCERTAINTY_NAME_SUFFIX)
    rainbow = scene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
    if rainbow is not None:
        node.GetDisplayNode().SetAndObserveColorNodeID(rainbow.GetID())
    apply_window(node, 50.0, 25.0)
    return node


def add_plausibility_overlay(scene, source_node, volume: Volume, metadata: dict, source_name: str | None = None):
    """Add the output's plausibility violation map as a label map (1 enhanced where contrast cannot reach, 2 darker
    than the NCCT, 3 above the ceiling) and show it as the label layer over the views."""
    name = (source_name or source_node.GetName()) + " - implausible enhancement (synthetic)"
    node = _add_marked_volume(scene, source_node, volume, metadata, name, scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name))
    node.SetAttribute(ROLE_ATTRIBUTE, "plausibility")
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetLabelVolumeID(node.GetID())
        composite.SetLabelOpacity(0.5)
    return node


def _add_marked_volume(scene, source_node, volume: Volume, metadata: dict, name: str, node=None):
    node = node_from_volume(scene, volume, name, node)
    for key, value in metadata.items():
        if key.startswith(PROVENANCE_PREFIX):
            node.SetAttribute(key, str(value))
    node.SetAttribute("SyntheticContrast.synthetic", "true")
    assign_case(node, source_node)  # a reference, so the sCECT keeps its NCCT through a save and an import
    place_beside(scene, node, source_node)
    return node


def place_beside(scene, node, sibling) -> None:
    """Put ``node`` under the same subject hierarchy parent (study) as ``sibling``."""
    sh = scene.GetSubjectHierarchyNode()
    if sh is None:
        return
    sibling_item = sh.GetItemByDataNode(sibling)
    parent = sh.GetItemParent(sibling_item) if sibling_item else sh.GetSceneItemID()
    item = sh.GetItemByDataNode(node)
    # Slicer's subject hierarchy plugins add items on their own; bare MRML (e.g. headless) does not.
    if not item:
        sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)


def apply_window(node, width: float, level: float) -> None:
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(width, level)


class WindowLevelLink:
    """Keeps window/level equal across the display nodes of the linked views."""

    def __init__(self, volume_nodes):
        self.displays = [n.GetDisplayNode() for n in volume_nodes]
        self._updating = False
        self._tags = [(d, d.AddObserver(vtk.vtkCommand.ModifiedEvent, self._on_modified)) for d in self.displays]

    def _on_modified(self, caller, _event):
        if self._updating:
            return
        self._updating = True
        try:
            for d in self.displays:
                if d is not caller and (d.GetWindow(), d.GetLevel()) != (caller.GetWindow(), caller.GetLevel()):
                    d.AutoWindowLevelOff()
                    d.SetWindowLevel(caller.GetWindow(), caller.GetLevel())
        finally:
            self._updating = False

    def remove(self) -> None:
        for display, tag in self._tags:
            display.RemoveObserver(tag)
        self._tags = []


def enhancement_volume(scene, ncct_node, scect_node, node=None):
    """sCECT minus NCCT as its own node (named synthetic), for a colour overlay on the NCCT; refills ``node`` if given."""
    ncct, scect = volume_from_node(ncct_node), volume_from_node(scect_node)
    if ncct.array.shape != scect.array.shape:
        raise ValueError("NCCT and sCECT grids differ; the enhancement map needs one grid")
    diff = ncct.with_array(scect.array - ncct.array)
    node = node_from_volume(scene, diff, ncct_node.GetName() + " - enhancement (synthetic)", node)
    node.SetAttribute("SyntheticContrast.synthetic", "true")
    node.SetAttribute(ROLE_ATTRIBUTE, OVERLAY_ROLE)
    # The overlay remembers what it was made from, by references that survive an import, so a stale one (a new
    # synthesis, another input) is recognised.
    assign_case(node, ncct_node)
    node.SetNodeReferenceID(OVERLAY_SOURCE_REFERENCE, scect_node.GetID())
    node.SetAttribute("SyntheticContrast.overlayTime", str(scect_node.GetImageData().GetMTime()))
    display = node.GetDisplayNode()
    rainbow = scene.GetNodeByID("vtkMRMLColorTableNodeRainbow")
    if rainbow is not None:
        display.SetAndObserveColorNodeID(rainbow.GetID())
    apply_window(node, 300.0, 150.0)
    display.SetLowerThreshold(20.0)
    display.ApplyThresholdOn()
    place_beside(scene, node, ncct_node)
    return node


# --- layouts ------------------------------------------------------------------------------------

LAYOUT_ID = 2601  # far from Slicer's built-in layout ids
VIEW_COLORS = ("#404040", "#6B8E23", "#D2691E")


def layout_xml(labels: list[str], coronal_row: bool = False) -> str:
    """Slicer layout XML: one axial view per volume side by side, and optionally a coronal row below."""
    root = ET.Element("layout", type="vertical")
    rows = [("Axial", "A")] + ([("Coronal", "C")] if coronal_row else [])
    for orientation, tag in rows:
        row = ET.SubElement(ET.SubElement(root, "item"), "layout", type="horizontal")
        for n, label in enumerate(labels):
            view = ET.SubElement(ET.SubElement(row, "item"), "view", {"class": "vtkMRMLSliceNode", "singletontag": f"SC{tag}{n}"})
            for prop, value in (("orientation", orientation), ("viewlabel", f"{label[:6]}"), ("viewcolor", VIEW_COLORS[n % 3])):
                ET.SubElement(view, "property", name=prop, action="default").text = value
    return ET.tostring(root, encoding="unicode")


def view_names(count: int, coronal_row: bool = False) -> list[str]:
    return [f"SC{tag}{n}" for tag in ("A", "C")[: 1 + coronal_row] for n in range(count)]


def register_layout(layout_node, labels: list[str], coronal_row: bool = False) -> int:
    """Register (or update) the side-by-side layout under ``LAYOUT_ID + variant``; returns its id."""
    layout_id = LAYOUT_ID + 10 * len(labels) + int(coronal_row)
    xml = layout_xml(labels, coronal_row)
    if layout_node.IsLayoutDescription(layout_id):
        layout_node.SetLayoutDescription(layout_id, xml)
    else:
        layout_node.AddLayoutDescription(layout_id, xml)
    return layout_id


def show_linked(scene, volume_nodes, coronal_row: bool = False) -> WindowLevelLink:
    """Show each volume in its own view column, link slice navigation and window/level across them."""
    names = view_names(len(volume_nodes), coronal_row)
    composites = {}
    for composite in nodes_of_class(scene, "vtkMRMLSliceCompositeNode"):
        composites[composite.GetLayoutName()] = composite
    for n, name in enumerate(names):
        composite = composites.get(name)
        if composite is None:
            continue  # the view is created by the layout manager once the layout is shown
        composite.SetBackgroundVolumeID(volume_nodes[n % len(volume_nodes)].GetID())
        composite.SetLinkedControl(True)
        composite.SetHotLinkedControl(True)
    return WindowLevelLink(volume_nodes)


def nodes_of_class(scene, cls) -> list:
    """Every node of an MRML class in the scene, as a Python list."""
    collection = scene.GetNodesByClass(cls)
    # GetNodesByClass returns a new reference that the Python wrapping adds its own to: without this, every call leaks it.
    collection.UnRegister(None)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


# --- placing markups by click -------------------------------------------------------------------

def start_placement(scene, markups_node) -> None:
    """Put the views in place mode for ``markups_node`` (one click per point), whatever its class.

    The selection node's active place class must be the node's own class: the markups displayable manager
    ignores an active node of another class and creates a new point list for the click instead.
    """
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    if selection is None or interaction is None:
        raise RuntimeError("the scene has no selection or interaction node; markups cannot be placed")
    selection.SetReferenceActivePlaceNodeClassName(markups_node.GetClassName())
    selection.SetReferenceActivePlaceNodeID(markups_node.GetID())
    interaction.SetPlaceModePersistence(0)
    interaction.SetCurrentInteractionMode(interaction.Place)


def defined_points(node) -> list[tuple[int, list[float]]]:
    """(index, RAS world position) of every control point whose position is defined (not a preview)."""
    out = []
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            continue
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out.append((i, p))
    return out


# --- ROIs ---------------------------------------------------------------------------------------

def _ras(point_lps) -> list[float]:
    return list(LPS_TO_RAS @ np.asarray(point_lps, float))


def add_lesion_line(scene, p1_ras, p2_ras, lesion_id: str, case=None):
    """A markups line across a node's short axis; its midpoint is the ROI centre."""
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", lesion_id)
    line.SetAttribute(ROLE_ATTRIBUTE, "lesion")
    assign_case(line, case)
    for p in (p1_ras, p2_ras):
        line.AddControlPoint(vtk.vtkVector3d(*p))
    return line


def reference_points_node(scene, case=None):
    """The case's one point list holding DTA and right/left subcutaneous fat, created on first use."""
    for node in nodes_of_class(scene, "vtkMRMLMarkupsFiducialNode"):
        if node.GetAttribute(ROLE_ATTRIBUTE) == "references" and in_case(node, case):
            return node
    name = f"{case.GetName()} - CNR reference points" if case is not None else "CNR reference points"
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    node.SetAttribute(ROLE_ATTRIBUTE, "references")
    assign_case(node, case)
    return node


def lesion_lines(scene, case=None) -> list:
    """The case's lesion lines (with ``case`` None: those of no case)."""
    return [line for line in nodes_of_class(scene, "vtkMRMLMarkupsLineNode")
            if line.GetAttribute(ROLE_ATTRIBUTE) == "lesion" and in_case(line, case)]


def reference_label(name: str, lesion_id: str | None = None) -> str:
    """'DTA' for the shared point, 'LN3 DTA' for one lesion's own."""
    return f"{lesion_id} {REFERENCE_LABELS[name]}" if lesion_id else REFERENCE_LABELS[name]


def set_reference_point(scene, name: str, point_ras, lesion_id: str | None = None, case=None) -> None:
    """Place or move a DTA / right fat / left fat point, shared ("DTA") or for one lesion ("LN3 DTA")."""
    if name not in REFERENCE_LABELS:
        raise ValueError(f"reference must be one of {list(REFERENCE_LABELS)}")
    node = reference_points_node(scene, case)
    label = reference_label(name, lesion_id)
    for i in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointLabel(i) == label:
            node.SetNthControlPointPosition(i, *point_ras)
            return
    node.AddControlPoint(vtk.vtkVector3d(*point_ras), label)


def _control_points(node) -> list[tuple[str, list[float]]]:
    out = []
    for i in range(node.GetNumberOfControlPoints()):
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, p)
        out.append((node.GetNthControlPointLabel(i), list(LPS_TO_RAS @ np.array(p))))
    return out


def rois_from_markups(scene, fraction: float = 0.9, case=None) -> dict:
    """ROI JSON (LPS) from one case's lesion lines and reference points (per-lesion points win); another case's
    markups in the same scene are never mixed in."""
    points = dict(_control_points(reference_points_node(scene, case)))
    shared = {key: points[label] for key, label in REFERENCE_LABELS.items() if label in points}
    lesions = []
    for line in lesion_lines(scene, case):
        if line.GetNumberOfControlPoints() != 2:
            continue
        lesion = {"id": line.GetName(), "short_axis": [p for _, p in _control_points(line)]}
        own = {key: points[reference_label(key, line.GetName())] for key in REFERENCE_LABELS
               if reference_label(key, line.GetName()) in points}
        if own:
            lesion["references"] = own
        lesions.append(lesion)
    return {"format": ROI_FORMAT, "coordinate_system": "LPS", "units": "mm", "roi_diameter_fraction": fraction,
            "source": "3D Slicer markups", "lesions": lesions, "references": shared}


def markups_from_rois(scene, data: dict, case=None) -> list:
    """Load ROI JSON into markups of the case whose NCCT is ``case``: a line per lesion, shared and per-lesion
    reference points."""
    from .measurement.rois import parse_rois

    lesions = parse_rois(data)
    system = str(data.get("coordinate_system", "LPS")).upper()
    to_ras = (lambda p: list(np.asarray(p, float))) if system == "RAS" else _ras
    lines = []
    for item, lesion in zip(data.get("lesions", []), lesions):
        if lesion.short_axis is not None:
            a, b = lesion.short_axis
        else:  # centre + diameter: draw the diameter left-right through the centre
            half = np.array([lesion.extra["short_axis_mm"] / 2, 0, 0])
            a, b = lesion.center - half, lesion.center + half
        lines.append(add_lesion_line(scene, _ras(a), _ras(b), lesion.lesion_id, case))
        for name, point in item.get("references", {}).items():
            set_reference_point(scene, name, to_ras(point), lesion.lesion_id, case)
    for name, point in data.get("references", {}).items():
        set_reference_point(scene, name, to_ras(point), case=case)
    return lines


def draw_measured_circles(scene, lesion: LesionROI, segments: int = 48) -> list:
    """Closed curves showing the four circles CNR measures, so the annotator sees exactly what counts."""
    curves = []
    points = {"lesion": lesion.center, **lesion.references}
    r = lesion.diameter_mm / 2
    for name, centre in points.items():
        curve = scene.AddNewNodeByClass("vtkMRMLMarkupsClosedCurveNode", f"{lesion.lesion_id} {name} ROI")
        curve.SetAttribute(ROLE_ATTRIBUTE, "measured-circle")
        for t in np.linspace(0, 2 * math.pi, segments, endpoint=False):
            curve.AddControlPoint(vtk.vtkVector3d(*_ras(np.asarray(centre) + [r * math.cos(t), r * math.sin(t), 0.0])))
        curve.SetLocked(True)
        curves.append(curve)
    return curves


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def cnr_table(scene, rows: list[dict], name: str = "Lymph-node CNR", table=None):
    """A table node with one row per (lesion, volume): ROI means/SDs, areas, voxel counts, noise, CNR, error.

    Columns whose values are numbers stay numbers (a row that failed gets NaN there, and its reason in the
    'error' column), so the table sorts and exports as numbers. An existing ``table`` is refilled in place.
    """
    if table is None:
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    numeric = {c: all(_is_number(r[c]) for r in rows if r.get(c) not in (None, "")) for c in columns}
    vtable = vtk.vtkTable()
    for column in columns:
        array = vtk.vtkDoubleArray() if numeric[column] else vtk.vtkStringArray()
        array.SetName(column)
        array.SetNumberOfValues(len(rows))
        for i, r in enumerate(rows):
            value = r.get(column)
            if numeric[column]:
                array.SetValue(i, float(value) if _is_number(value) else math.nan)
            else:
                array.SetValue(i, "" if value is None else str(value))
        vtable.AddColumn(array)
    table.SetAndObserveTable(vtable)
    table.SetAttribute("SyntheticContrast.created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    return table
