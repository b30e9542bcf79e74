"""Lymph-node ROIs by click and their CNR: lesion lines, DTA / fat reference points, one CNR table per case."""

from __future__ import annotations

import json

import slicer

CNR_TABLE_ATTRIBUTE = "SyntheticContrast.cnrFor"


class ReferencePointPlacement:
    """One pending DTA / right fat / left fat click. The new point gets the label and replaces an older point of
    that label; if place mode ends without a click, the observers go too, so a later click is never relabelled."""

    def __init__(self, points, label: str, interaction):
        self.label = label
        self._known = {points.GetNthControlPointID(i) for i in range(points.GetNumberOfControlPoints())}
        self._tags = [
            (points, points.AddObserver(points.PointPositionDefinedEvent, self._on_defined)),
            (interaction, interaction.AddObserver(interaction.InteractionModeChangedEvent, self._on_mode_changed)),
        ]

    def _on_defined(self, caller, event):
        from SyntheticContrastLib import mrml
        new = [i for i, _ in mrml.defined_points(caller) if caller.GetNthControlPointID(i) not in self._known]
        if not new:
            return
        self.stop()
        placed_id = caller.GetNthControlPointID(new[-1])
        for i in range(caller.GetNumberOfControlPoints() - 1, -1, -1):
            if caller.GetNthControlPointLabel(i) == self.label and caller.GetNthControlPointID(i) != placed_id:
                caller.RemoveNthControlPoint(i)
        caller.SetNthControlPointLabel(caller.GetNthControlPointIndexByID(placed_id), self.label)

    def _on_mode_changed(self, caller, event):
        if caller.GetCurrentInteractionMode() != caller.Place:
            self.stop()

    def stop(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        self._tags = []


class AnnotationController:
    def __init__(self):
        self._pending: ReferencePointPlacement | None = None

    def reset(self) -> None:
        self.cancel_pending()

    def cancel_pending(self) -> None:
        if self._pending:
            self._pending.stop()
        self._pending = None

    def start_lymph_node_line(self, case=None):
        """A new line 'LN<n>' of the case whose NCCT is ``case``: its two clicks are the ends of the node's short axis
        on an axial slice."""
        from SyntheticContrastLib import mrml
        self.cancel_pending()
        lines = mrml.lesion_lines(slicer.mrmlScene, case)
        names = {n.GetName() for n in lines}
        number = len(lines) + 1
        while f"LN{number}" in names:
            number += 1
        line = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"LN{number}")
        line.SetAttribute(mrml.ROLE_ATTRIBUTE, "lesion")
        mrml.assign_case(line, case)
        line.CreateDefaultDisplayNodes()
        mrml.start_placement(slicer.mrmlScene, line)
        return line

    def start_reference_point(self, name: str, lesion_id: str | None = None, case=None) -> ReferencePointPlacement:
        """One click places the DTA / right fat / left fat point (shared, or for one lesion)."""
        from SyntheticContrastLib import mrml
        if name not in mrml.REFERENCE_LABELS:
            raise ValueError(f"Unknown reference point {name!r}; choose one of {', '.join(mrml.REFERENCE_LABELS)}.")
        self.cancel_pending()
        points = mrml.reference_points_node(slicer.mrmlScene, case)
        if points.GetDisplayNode() is None:
            points.CreateDefaultDisplayNodes()
        self._pending = ReferencePointPlacement(points, mrml.reference_label(name, lesion_id),
                                                slicer.app.applicationLogic().GetInteractionNode())
        mrml.start_placement(slicer.mrmlScene, points)
        return self._pending

    @staticmethod
    def _case_table(input_node):
        from SyntheticContrastLib import mrml
        for table in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLTableNode"):
            if table.GetAttribute(CNR_TABLE_ATTRIBUTE) == "true" and mrml.in_case(table, input_node):
                return table
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", f"{input_node.GetName()} - lymph-node CNR")
        table.SetAttribute(CNR_TABLE_ATTRIBUTE, "true")
        mrml.assign_case(table, input_node)
        return table

    def compute_cnr(self, volumes: dict, input_node, sd_maps: dict | None = None):
        """CNR of every lesion on each named volume node; fills this case's table in place and draws the circles.
        Volumes with an SD map node in ``sd_maps`` get the CNR's uncertainty columns."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.measurement.cnr import measure_cnr, summarize_cnr
        from SyntheticContrastLib.measurement.rois import parse_rois

        lesions = parse_rois(mrml.rois_from_markups(slicer.mrmlScene, case=input_node), "scene markups")
        if not lesions:
            strays = len(mrml.lesion_lines(slicer.mrmlScene, None))
            raise ValueError(f"Add at least one lymph node line and the DTA, right fat and left fat points for "
                             f"{input_node.GetName()} first." + (
                                 f" {strays} line(s) in the scene belong to no CT: they were drawn with no non-contrast "
                                 "CT chosen, so they are not measured on this one." if strays else ""))
        sd = {name: mrml.volume_from_node(node) for name, node in (sd_maps or {}).items()}
        rows = measure_cnr({name: mrml.volume_from_node(node) for name, node in volumes.items()}, lesions, sd)
        for node in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLMarkupsClosedCurveNode"):
            if node.GetAttribute(mrml.ROLE_ATTRIBUTE) == "measured-circle" and mrml.in_case(node, input_node):
                slicer.mrmlScene.RemoveNode(node)
        for lesion in lesions:
            for circle in mrml.draw_measured_circles(slicer.mrmlScene, lesion):
                mrml.assign_case(circle, input_node)
        table = mrml.cnr_table(slicer.mrmlScene, rows, table=self._case_table(input_node))
        summary = summarize_cnr(rows)
        medians = ", ".join(f"{name} {s['cnr']['median']:.2f}" for name, s in summary["volumes"].items())
        errors = sum(1 for r in rows if r["error"])
        return table, f"CNR median: {medians}." + (f" {errors} ROI measurement(s) failed; see the table's error column." if errors else "")

    @staticmethod
    def import_rois(path, case=None) -> list:
        from SyntheticContrastLib import mrml
        with open(path, encoding="utf-8") as fh:
            return mrml.markups_from_rois(slicer.mrmlScene, json.load(fh), case)

    @staticmethod
    def export_rois(path, case=None) -> None:
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.measurement.rois import write_rois

        write_rois(mrml.rois_from_markups(slicer.mrmlScene, case=case), path)

