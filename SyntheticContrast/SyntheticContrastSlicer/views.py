"""Linked side-by-side views, window presets and the enhancement overlay.

Nothing here caches an MRML node: every call finds its nodes in the scene, so a closed scene, a second synthesis
or node IDs reused after ``Clear()`` can never leave a stale node on screen.
"""

from __future__ import annotations

import slicer


class ViewsController:
    def __init__(self):
        self._window_level_link = None
        self._overlay_state = None  # what the overlay last showed; unchanged state means nothing to touch
        self._uncertainty_state = None

    def reset(self) -> None:
        """After a scene close: forget the W/L link (its display nodes are gone) and the overlay state."""
        if self._window_level_link:
            self._window_level_link.remove()
        self._window_level_link = None
        self._overlay_state = self._uncertainty_state = None

    def show_linked(self, volumes, labels, coronal_row: bool = False) -> None:
        """One view column per volume, slice navigation and window/level linked, mediastinal window."""
        from SyntheticContrastLib import mrml
        layout_manager = slicer.app.layoutManager()
        layout_id = mrml.register_layout(layout_manager.layoutLogic().GetLayoutNode(), labels, coronal_row)
        layout_manager.setLayout(layout_id)  # creates the views (and their composite nodes) before it returns
        if self._window_level_link:
            self._window_level_link.remove()
        self._window_level_link = mrml.show_linked(slicer.mrmlScene, volumes, coronal_row)
        mrml.apply_window(volumes[0], *mrml.WINDOW_PRESETS["mediastinal"])

    @staticmethod
    def apply_preset(name: str, node) -> None:
        from SyntheticContrastLib import mrml
        if name not in mrml.WINDOW_PRESETS:
            raise ValueError(f"Unknown window preset {name!r}; choose one of {', '.join(mrml.WINDOW_PRESETS)}.")
        if node is None:
            raise ValueError("Select a volume first: the window preset applies to the shown volumes.")
        mrml.apply_window(node, *mrml.WINDOW_PRESETS[name])  # the W/L link carries it to the other views

    @staticmethod
    def _overlay_node(ncct, scect):
        from SyntheticContrastLib import mrml
        for node in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLScalarVolumeNode"):
            if node.GetAttribute(mrml.ROLE_ATTRIBUTE) == mrml.OVERLAY_ROLE and mrml.in_case(node, ncct):
                return node
        return None

    def update_overlay(self, ncct, scect, show: bool, opacity: float) -> None:
        """Show sCECT - NCCT in colour over the NCCT views, or take it away; a foreground layer the user chose
        is left alone unless the overlay is being shown."""
        from SyntheticContrastLib import mrml
        if not (ncct and scect):
            return
        image = scect.GetImageData()
        state = (ncct.GetID(), scect.GetID(), image.GetMTime() if image else 0, bool(show), round(float(opacity), 3))
        if state == self._overlay_state:
            return
        self._overlay_state = state
        overlay = self._overlay_node(ncct, scect)
        if show and (overlay is None or not mrml.overlay_is_current(overlay, scect)):
            overlay = mrml.enhancement_volume(slicer.mrmlScene, ncct, scect, overlay)
        self._show_over(ncct, overlay, show, opacity)

    def update_uncertainty(self, scect, sd, show: bool, opacity: float) -> None:
        """Show the SD map in colour over the sCECT views, or take it away (only if it is the one shown)."""
        if not (scect and sd):
            return
        state = (scect.GetID(), sd.GetID(), bool(show), round(float(opacity), 3))
        if state == self._uncertainty_state:
            return
        self._uncertainty_state = state
        self._show_over(scect, sd, show, opacity)

    @staticmethod
    def _show_over(background, foreground, show: bool, opacity: float) -> None:
        from SyntheticContrastLib import mrml
        for composite in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLSliceCompositeNode"):
            if composite.GetBackgroundVolumeID() != background.GetID():
                continue
            if show:
                composite.SetForegroundVolumeID(foreground.GetID())
                composite.SetForegroundOpacity(opacity)
            elif foreground is not None and composite.GetForegroundVolumeID() == foreground.GetID():
                composite.SetForegroundVolumeID(None)
