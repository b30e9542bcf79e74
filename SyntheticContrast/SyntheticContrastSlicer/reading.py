"""Blinded reading in the panel: cases under their codes only, and marks saved the moment they change on screen.

Volumes are read by the engine and handed to MRML without a storage node, so no file path, patient name or
series description can reach the reader through the scene.
"""

from __future__ import annotations

import slicer
import vtk

from .synthesis import chosen_path

ROLE_LABELS = {"ncct": "NCCT", "scect": "sCECT", "cect": "CECT"}


class ReadingController:
    def __init__(self, views, rating):
        self.views = views
        self._rating = rating  # callable: the rating chosen in the panel now
        self.session = None
        self.code = None
        self._nodes = []
        self._marks = None
        self._tags = []
        self._removing = False  # removing refused points fires PointRemovedEvent: that sync must not run

    def reset(self) -> None:
        """After a scene close: the nodes are gone; the session on disk is untouched and can be resumed."""
        self._tags, self._nodes, self._marks, self.session, self.code = [], [], None, None, None

    def _require_session(self):
        if self.session is None or self._marks is None:
            raise ValueError("Start a reading session first.")

    def start(self, study_dir, reader: str, session_number: int) -> str:
        """Open (or resume) a reader's session and load its first incomplete case."""
        from SyntheticContrastLib.readerstudy.sessions import ReadingSession

        folder = chosen_path(study_dir)
        if not folder:
            raise ValueError("Choose the readers' folder of the study (the one holding package.json).")
        if not reader.strip():
            raise ValueError("Enter your reader id.")
        session = ReadingSession(folder, reader.strip(), session_number)
        warning = session.state.get("washout_warning")
        if warning:
            slicer.util.warningDisplay(f"Washout: {warning}.")
        return self._load(session, session.current_code())

    def _clear(self) -> None:
        for node, tag in self._tags:
            node.RemoveObserver(tag)
        for node in self._nodes + [self._marks]:
            if node is not None and node.GetScene():
                slicer.mrmlScene.RemoveNode(node)
        self.reset()

    def _load(self, session, code) -> str:
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.io.reading import read_volume

        self._clear()
        if code is None:
            done, total = session.progress()
            return f"Session {session.entry['session']} complete ({done}/{total} cases). Thank you."
        nodes, labels = [], []
        for role, path in session.volumes(code).items():
            label = ROLE_LABELS.get(role, role)
            node = mrml.node_from_volume(slicer.mrmlScene, read_volume(path, check_hu=False), f"{code} {label}")
            node.SetAttribute("SyntheticContrast.reading", code)
            nodes.append(node)
            labels.append(label)
        self.views.show_linked(nodes, labels)
        marks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{code} marks")
        marks.SetAttribute(mrml.ROLE_ATTRIBUTE, "reading-marks")
        marks.CreateDefaultDisplayNodes()
        for mark in session.case_record(code)["marks"]:  # resuming: show what was saved
            i = marks.AddControlPoint(vtk.vtkVector3d(*mrml._ras(mark["point_lps"])), f"#{mark['id']} ({mark['rating']})")
            marks.SetNthControlPointDescription(i, str(mark["id"]))
        self.session, self.code, self._nodes, self._marks = session, code, nodes, marks
        self._tags = [(marks, marks.AddObserver(event, lambda caller, ev: self.sync()))
                      for event in (marks.PointPositionDefinedEvent, marks.PointModifiedEvent, marks.PointRemovedEvent)]
        done, total = session.progress()
        shows = " + ".join(ROLE_LABELS.get(role, role) for role in session.shows)
        return f"Case {code} ({done + 1} of {total}), showing {shows}. Mark each mediastinal node > 5 mm."

    def sync(self) -> None:
        """Make the saved marks equal the defined points on screen: new points, moves and deletions are saved."""
        from SyntheticContrastLib import mrml
        session, code, marks = self.session, self.code, self._marks
        if session is None or self._removing:
            return
        saved = {m["id"]: m for m in session.case_record(code)["marks"]}
        shown, refused = set(), {}
        for i, ras in mrml.defined_points(marks):
            lps = [float(v) for v in mrml.LPS_TO_RAS @ ras]
            mark_id = marks.GetNthControlPointDescription(i)
            if not mark_id:
                rating = float(self._rating())  # any scale the study declares, such as 0-100
                try:
                    mark_id = session.add_mark(code, lps, rating)
                except ValueError as error:  # off the study's scale: nothing saved, so nothing may stay on screen
                    refused[i] = error
                    continue
                marks.SetNthControlPointDescription(i, str(mark_id))
                marks.SetNthControlPointLabel(i, f"#{mark_id} ({rating:g})")
            else:
                mark_id = int(mark_id)
                if mark_id in saved and list(saved[mark_id]["point_lps"]) != lps:
                    session.edit_mark(code, mark_id, point_lps=lps)
            shown.add(int(mark_id))
        for mark_id in set(saved) - shown:
            session.delete_mark(code, mark_id)
        if refused:
            self._remove_refused(refused)

    def _remove_refused(self, refused: dict) -> None:
        """A point that could not be saved leaves the screen, and the reader is told why in a dialog: this runs in a
        markups observer, whose exceptions reach only the Python console, and a point left there unsaved would be
        saved by the next sync with whatever rating is current then."""
        self._removing = True
        try:
            for i in sorted(refused, reverse=True):
                self._marks.RemoveNthControlPoint(i)
        finally:
            self._removing = False
        reason = next(iter(refused.values()))
        slicer.util.errorDisplay(f"The mark was not saved: {reason}. Set a rating on the study's scale and place the "
                                 "mark again.")

    def start_mark(self) -> None:
        from SyntheticContrastLib import mrml
        self._require_session()
        mrml.start_placement(slicer.mrmlScene, self._marks)

    def scale(self) -> tuple[float, float]:
        from SyntheticContrastLib.readerstudy.sessions import PAPER_RATING_SCALE

        if self.session is not None:
            return self.session.rating_scale
        return float(PAPER_RATING_SCALE[0]), float(PAPER_RATING_SCALE[1])

    def rerate_last(self, rating: float) -> str:
        from SyntheticContrastLib import mrml
        self._require_session()
        placed = mrml.defined_points(self._marks)
        if not placed:
            raise ValueError("Place a mark first; the new rating applies to the last mark placed.")
        i = placed[-1][0]
        mark_id = int(self._marks.GetNthControlPointDescription(i))
        self.session.edit_mark(self.code, mark_id, rating=float(rating))
        self._marks.SetNthControlPointLabel(i, f"#{mark_id} ({float(rating):g})")
        return f"Mark #{mark_id} rated {float(rating):g}."

    def next_case(self) -> str:
        self._require_session()
        return self._load(self.session, self.session.complete_case(self.code))
