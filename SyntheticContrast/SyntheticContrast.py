"""3D Slicer module: synthetic contrast-enhanced CT from a non-contrast CT, linked views, and lymph-node CNR.

The widget only wires the .ui to a parameter node and the Logic; the Logic calls the engine
(SyntheticContrastLib) through its MRML bridge. Synthesis runs in-process, with Qt events processed
between window batches, so the panel stays responsive and Cancel takes effect at the next batch.
"""

import json
import pathlib
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

#: Python packages the engine needs beyond Slicer's own, as pip requirement strings.
ENGINE_REQUIREMENTS = {"safetensors": "safetensors>=0.4", "tqdm": "tqdm>=4.60", "scipy": "scipy>=1.10"}


class SyntheticContrast(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Synthetic Contrast"
        self.parent.categories = ["Imaging"]
        self.parent.dependencies = []
        self.parent.contributors = ["SyntheticContrast contributors"]
        self.parent.helpText = (
            "Makes a SYNTHETIC contrast-enhanced CT from a non-contrast chest CT with a 3D pix2pix GAN "
            "(Choi et al., Sci Rep 2021), shows it in linked views, and measures lymph-node CNR from ROIs. "
            "Synthetic images are research results, not acquired scans. The bundled model was trained on "
            "phantoms only and is not for diagnosis."
        )
        self.parent.acknowledgementText = "Method: Choi JW et al., Sci Rep 11, 20403 (2021)."


@parameterNodeWrapper
class SyntheticContrastParameterNode:
    """Panel state; every widget with a SlicerParameterName in the .ui is bound to one of these."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    modelPath: pathlib.Path  # ctkPathLineEdit binds to a Path; empty means the bundled demo model
    device: Annotated[str, Choice(["auto", "cuda", "cpu", "mps"])] = "auto"
    stride: Annotated[int, WithinRange(0, 64)] = 0
    blend: Annotated[str, Choice(["gaussian", "mean"])] = "gaussian"
    batchSize: Annotated[int, WithinRange(1, 64)] = 1
    precision: Annotated[str, Choice(["fp32", "fp16", "bf16"])] = "fp32"
    coronalRow: bool = False
    showOverlay: bool = False
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    readingStudyDir: pathlib.Path
    readingReader: str = ""
    readingSession: Annotated[int, WithinRange(1, 9)] = 1
    readingRating: Annotated[str, Choice(["1", "2", "3", "4"])] = "3"


class SyntheticContrastWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SyntheticContrast.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.cnrTableView.setMRMLScene(slicer.mrmlScene)
        self.logic = SyntheticContrastLogic()

        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.logic.requestCancel)
        self.ui.showViewsButton.connect("clicked(bool)", self.onShowViews)
        for button, preset in (
            (self.ui.presetMediastinalButton, "mediastinal"),
            (self.ui.presetSoftTissueButton, "soft tissue"),
            (self.ui.presetLungButton, "lung"),
            (self.ui.presetVascularButton, "vascular"),
        ):
            button.connect("clicked(bool)", lambda _checked, p=preset: self.logic.applyWindowPreset(p))
        self.ui.addLymphNodeButton.connect("clicked(bool)", self.logic.startLymphNodeLine)
        self.ui.markDTAButton.connect("clicked(bool)", lambda: self.logic.startReferencePoint("dta"))
        self.ui.markRightFatButton.connect("clicked(bool)", lambda: self.logic.startReferencePoint("right_fat"))
        self.ui.markLeftFatButton.connect("clicked(bool)", lambda: self.logic.startReferencePoint("left_fat"))
        self.ui.computeCNRButton.connect("clicked(bool)", self.onComputeCNR)
        self.ui.importROIsButton.connect("clicked(bool)", self.onImportROIs)
        self.ui.exportROIsButton.connect("clicked(bool)", self.onExportROIs)
        self.ui.exportDICOMButton.connect("clicked(bool)", self.onExportDICOM)
        self.ui.startReadingButton.connect("clicked(bool)", self.onStartReading)
        self.ui.placeMarkButton.connect("clicked(bool)", self.logic.startReadingMark)
        self.ui.rerateMarkButton.connect("clicked(bool)", lambda: self.logic.rerateLastMark(self._parameterNode))
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCase)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self.removeObservers()
        self._releaseParameterNode()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._releaseParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.inputVolume = first

    def _releaseParameterNode(self):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)
            self._parameterNodeGuiTag = None

    def setParameterNode(self, parameterNode: Optional[SyntheticContrastParameterNode]):
        self._releaseParameterNode()
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)
            self._onParameterChanged()

    def _onParameterChanged(self, caller=None, event=None):
        state = self.logic.panelState(self._parameterNode)
        self.ui.applyButton.enabled = state["canApply"]
        self.ui.applyButton.toolTip = state["applyHint"]
        self.logic.updateOverlay(self._parameterNode)

    def onApply(self):
        self.ui.applyButton.enabled = False
        self.ui.cancelButton.enabled = True
        self.ui.progressBar.value = 0

        def progress(done, total):
            self.ui.progressBar.maximum = total
            self.ui.progressBar.value = done
            slicer.app.processEvents()

        try:
            with slicer.util.tryWithErrorDisplay("Synthetic contrast failed.", waitCursor=True):
                self.ui.environmentLabel.text = self.logic.ensureDependencies()
                message = self.logic.synthesize(self._parameterNode, progress)
                self.ui.statusLabel.text = message
        finally:
            self.ui.cancelButton.enabled = False
            self._onParameterChanged()

    def onShowViews(self):
        with slicer.util.tryWithErrorDisplay("Could not show the linked views."):
            self.logic.showLinkedViews(self._parameterNode)

    def onComputeCNR(self):
        with slicer.util.tryWithErrorDisplay("CNR could not be computed.", waitCursor=True):
            table, message = self.logic.computeCNR(self._parameterNode)
            self.ui.cnrTableView.setMRMLTableNode(table)
            self.ui.statusLabel.text = message

    def onExportDICOM(self):
        folder = qt.QFileDialog.getExistingDirectory(None, "Folder to create the synthetic series in")
        if folder:
            with slicer.util.tryWithErrorDisplay("DICOM export failed.", waitCursor=True):
                self.ui.statusLabel.text = self.logic.exportDICOM(self._parameterNode, folder)

    def onStartReading(self):
        with slicer.util.tryWithErrorDisplay("The reading session could not start."):
            self.ui.readingCaseLabel.text = self.logic.startReading(self._parameterNode)

    def onNextCase(self):
        with slicer.util.tryWithErrorDisplay("Could not go to the next case."):
            self.ui.readingCaseLabel.text = self.logic.nextReadingCase(self._parameterNode)

    def onImportROIs(self):
        path = qt.QFileDialog.getOpenFileName(None, "Import ROI JSON", "", "ROI JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("ROI file could not be imported."):
                self.logic.importROIs(path)

    def onExportROIs(self):
        path = qt.QFileDialog.getSaveFileName(None, "Export ROI JSON", "rois.json", "ROI JSON (*.json)")
        if path:
            with slicer.util.tryWithErrorDisplay("ROI file could not be written."):
                self.logic.exportROIs(path)


class SyntheticContrastLogic(ScriptedLoadableModuleLogic):
    """Every decision of the panel: dependencies, synthesis, views, ROIs. Usable from headless scripts."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._cancelRequested = False
        self._windowLevelLink = None
        self._overlayNode = None
        self._reading = None  # (ReadingSession, case code, loaded nodes, marks node)

    def getParameterNode(self):
        return SyntheticContrastParameterNode(super().getParameterNode())

    # -- dependencies (asked for on first use, never at import) -----------------------------------
    def ensureDependencies(self, askConfirmation: bool = True) -> str:
        """Install torch (PyTorch extension if present, else pip) and the engine's packages; report versions."""
        try:
            import torch  # noqa: F401
        except ImportError:
            if askConfirmation and not slicer.util.confirmOkCancelDisplay(
                "Synthetic contrast needs PyTorch, which is not installed. Install it now? (This can take minutes.)"
            ):
                raise RuntimeError("PyTorch is required; installation was declined.")
            try:
                import PyTorchUtils  # the PyTorch extension picks a CUDA build that matches the driver
            except ImportError:
                slicer.util.pip_install("torch>=2.1")
            else:
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.1") is None:
                    raise RuntimeError("PyTorch could not be installed through the PyTorch extension.")
        for module, requirement in ENGINE_REQUIREMENTS.items():
            try:
                __import__(module)
            except ImportError:
                slicer.util.pip_install(requirement)
        import torch

        from SyntheticContrastLib.inference import resolve_device

        return f"torch {torch.__version__}; device {resolve_device('auto')} (auto)"

    # -- synthesis -------------------------------------------------------------------------------
    def panelState(self, p) -> dict:
        if p is None or not p.inputVolume:
            return {"canApply": False, "applyHint": "Select a non-contrast CT volume"}
        return {"canApply": True, "applyHint": f"Synthesise contrast for {p.inputVolume.GetName()}"}

    def requestCancel(self):
        self._cancelRequested = True

    def modelCardPath(self, p) -> str:
        from SyntheticContrastLib.models import DEFAULT_MODEL_CARD

        chosen = str(p.modelPath) if p.modelPath else ""
        return chosen if chosen not in ("", ".") else str(DEFAULT_MODEL_CARD)

    def synthesize(self, p, progress=None) -> str:
        """Run the engine on the input node; the new node is named, attributed and windowed as synthetic."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.inference import SynthesisOptions, synthesize_volume
        from SyntheticContrastLib.models import load_model

        self._cancelRequested = False
        model = load_model(self.modelCardPath(p), device="cpu")
        options = SynthesisOptions(p.stride or None, p.blend, p.batchSize, p.precision, p.device)
        try:
            result, report = synthesize_volume(
                mrml.volume_from_node(p.inputVolume), model, options, progress=progress, cancel=lambda: self._cancelRequested
            )
        finally:
            del model
            self.releaseGPUMemory()
        output = mrml.add_synthetic_volume(slicer.mrmlScene, p.inputVolume, result, result.metadata)
        p.outputVolume = output
        notes = "; ".join(report.notes)
        return f"{output.GetName()}: {report.windows} windows, stride {report.stride}, {report.device}." + (f" {notes}" if notes else "")

    @staticmethod
    def releaseGPUMemory():
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def exportDICOM(self, p, parentFolder) -> str:
        """Write the sCECT as a derived DICOM series (new folder) in the study of the DICOM input it came from."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.dicom_export import export_dicom_series
        from SyntheticContrastLib.volume_io import check_dicom_series

        if not p.outputVolume or p.outputVolume.GetAttribute("SyntheticContrast.synthetic") != "true":
            raise ValueError("Run the synthesis first: only a synthetic volume made here can be exported.")
        uids = (p.inputVolume.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids:
            raise ValueError("The input was not loaded from DICOM, so there is no study to add the synthetic series to.")
        files = check_dicom_series([slicer.dicomDatabase.fileForInstance(uid) for uid in uids], p.inputVolume.GetName())
        out = pathlib.Path(parentFolder) / f"{p.inputVolume.GetName()}_SYNTHETIC_CONTRAST".replace(" ", "_")
        written = export_dicom_series(mrml.volume_from_node(p.outputVolume), out, files,
                                      p.outputVolume.GetAttribute("SyntheticContrast.model_id"),
                                      p.outputVolume.GetAttribute("SyntheticContrast.model_sha256"))
        return f"Wrote {len(written)} slices of a SYNTHETIC CONTRAST series to {out}."

    # -- views -----------------------------------------------------------------------------------
    def _viewedVolumes(self, p):
        volumes = [v for v in (p.inputVolume, p.outputVolume, p.referenceVolume) if v]
        if len(volumes) < 2:
            raise ValueError("Run the synthesis first: the linked views need the NCCT and its sCECT.")
        return volumes

    def showLinkedViews(self, p):
        from SyntheticContrastLib import mrml

        volumes = self._viewedVolumes(p)
        labels = ["NCCT", "sCECT", "CECT"][: len(volumes)]
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        layoutId = mrml.register_layout(layoutNode, labels, p.coronalRow)
        slicer.app.layoutManager().setLayout(layoutId)
        slicer.app.processEvents()  # the layout manager creates the views' slice nodes now
        if self._windowLevelLink:
            self._windowLevelLink.remove()
        self._windowLevelLink = mrml.show_linked(slicer.mrmlScene, volumes, p.coronalRow)
        self.applyWindowPreset("mediastinal", volumes[0])

    def applyWindowPreset(self, name, node=None):
        from SyntheticContrastLib import mrml

        parameters = self.getParameterNode()
        node = node or parameters.inputVolume
        if node:
            mrml.apply_window(node, *mrml.WINDOW_PRESETS[name])  # the W/L link carries it to the other views

    def updateOverlay(self, p):
        """Show or hide sCECT - NCCT in colour over the NCCT (first view column) with the chosen opacity."""
        from SyntheticContrastLib import mrml

        if p is None or not (p.inputVolume and p.outputVolume):
            return
        if p.showOverlay and self._overlayNode is None:
            self._overlayNode = mrml.enhancement_volume(slicer.mrmlScene, p.inputVolume, p.outputVolume)
        for composite in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLSliceCompositeNode"):
            if composite.GetBackgroundVolumeID() == p.inputVolume.GetID():
                composite.SetForegroundVolumeID(self._overlayNode.GetID() if p.showOverlay and self._overlayNode else None)
                composite.SetForegroundOpacity(p.overlayOpacity)

    # -- ROIs and CNR ----------------------------------------------------------------------------
    def startLymphNodeLine(self):
        """Let the annotator click the two ends of a node's short axis on the current axial slice."""
        from SyntheticContrastLib import mrml

        count = len([n for n in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLMarkupsLineNode") if n.GetAttribute(mrml.ROLE_ATTRIBUTE) == "lesion"])
        line = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", f"LN{count + 1}")
        line.SetAttribute(mrml.ROLE_ATTRIBUTE, "lesion")
        line.CreateDefaultDisplayNodes()
        slicer.modules.markups.logic().StartPlaceMode(False)
        slicer.app.applicationLogic().GetSelectionNode().SetActivePlaceNodeID(line.GetID())

    def startReferencePoint(self, name):
        """Place one DTA / right fat / left fat point; an earlier point of the same name is replaced."""
        from SyntheticContrastLib import mrml

        points = mrml.reference_points_node(slicer.mrmlScene)
        label = mrml.REFERENCE_LABELS[name]

        def onPlaced(caller, event):
            last = caller.GetNumberOfControlPoints() - 1
            for i in range(last - 1, -1, -1):
                if caller.GetNthControlPointLabel(i) == label:
                    caller.RemoveNthControlPoint(i)
            caller.SetNthControlPointLabel(caller.GetNumberOfControlPoints() - 1, label)
            caller.RemoveObserver(tag)

        tag = points.AddObserver(points.PointPositionDefinedEvent, onPlaced)
        slicer.app.applicationLogic().GetSelectionNode().SetActivePlaceNodeID(points.GetID())
        slicer.modules.markups.logic().StartPlaceMode(False)

    def computeCNR(self, p):
        """CNR on NCCT, sCECT and the reference CECT from the scene's ROIs; draws the circles measured."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.cnr import measure_cnr, summarize_cnr
        from SyntheticContrastLib.rois import parse_rois

        lesions = parse_rois(mrml.rois_from_markups(slicer.mrmlScene), "scene markups")
        if not lesions:
            raise ValueError("Add at least one lymph node line and the DTA, right fat and left fat points first.")
        volumes = {name: mrml.volume_from_node(node) for name, node in
                   (("NCCT", p.inputVolume), ("sCECT (synthetic)", p.outputVolume), ("CECT", p.referenceVolume)) if node}
        rows = measure_cnr(volumes, lesions)
        for node in mrml.nodes_of_class(slicer.mrmlScene, "vtkMRMLMarkupsClosedCurveNode"):
            if node.GetAttribute(mrml.ROLE_ATTRIBUTE) == "measured-circle":
                slicer.mrmlScene.RemoveNode(node)
        for lesion in lesions:
            mrml.draw_measured_circles(slicer.mrmlScene, lesion)
        table = mrml.cnr_table(slicer.mrmlScene, rows)
        summary = summarize_cnr(rows)
        medians = ", ".join(f"{name} {s['cnr']['median']:.2f}" for name, s in summary["volumes"].items())
        errors = sum(1 for r in rows if r["error"])
        return table, f"CNR median: {medians}." + (f" {errors} ROI measurement(s) failed; see the table's error column." if errors else "")

    def importROIs(self, path):
        from SyntheticContrastLib import mrml

        with open(path, encoding="utf-8") as fh:
            mrml.markups_from_rois(slicer.mrmlScene, json.load(fh))

    def exportROIs(self, path):
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.rois import write_rois

        write_rois(mrml.rois_from_markups(slicer.mrmlScene), path)


    # -- blinded reading ---------------------------------------------------------------------------
    def startReading(self, p) -> str:
        """Open (or resume) a reader's session and load its first incomplete case."""
        from SyntheticContrastLib.reader_study import ReadingSession

        if not p.readingStudyDir or not p.readingReader:
            raise ValueError("Choose the study folder and enter your reader id.")
        session = ReadingSession(p.readingStudyDir, p.readingReader, p.readingSession)
        warning = session.state.get("washout_warning")
        if warning:
            slicer.util.warningDisplay(f"Washout: {warning}.")
        return self._loadReadingCase(session, session.current_code())

    def _clearReadingCase(self):
        if self._reading:
            for node in self._reading[2] + [self._reading[3]]:
                if node is not None and node.GetScene():
                    slicer.mrmlScene.RemoveNode(node)
        self._reading = None

    def _loadReadingCase(self, session, code) -> str:
        """Volumes appear under the case code and neutral names only; paths and patient names stay hidden."""
        from SyntheticContrastLib import mrml

        self._clearReadingCase()
        if code is None:
            done, total = session.progress()
            return f"Session {session.entry['session']} complete ({done}/{total} cases). Thank you."
        labels = {"ncct": "NCCT", "scect": "sCECT", "cect": "CECT"}
        nodes = []
        for role, path in session.volumes(code).items():
            node = slicer.util.loadVolume(path, properties={"name": f"{code} {labels.get(role, role)}", "show": False})
            node.SetAttribute("SyntheticContrast.reading", code)
            nodes.append(node)
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        slicer.app.layoutManager().setLayout(mrml.register_layout(layoutNode, [labels.get(r, r) for r in session.volumes(code)]))
        slicer.app.processEvents()
        if self._windowLevelLink:
            self._windowLevelLink.remove()
        self._windowLevelLink = mrml.show_linked(slicer.mrmlScene, nodes)
        mrml.apply_window(nodes[0], *mrml.WINDOW_PRESETS["mediastinal"])
        marks = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"{code} marks")
        marks.SetAttribute(mrml.ROLE_ATTRIBUTE, "reading-marks")
        for mark in session.case_record(code)["marks"]:  # resuming: show what was saved
            i = marks.AddControlPoint(vtk.vtkVector3d(*mrml._ras(mark["point_lps"])), f"#{mark['id']} ({mark['rating']})")
            marks.SetNthControlPointDescription(i, str(mark["id"]))
        for event in (marks.PointPositionDefinedEvent, marks.PointModifiedEvent, marks.PointRemovedEvent):
            marks.AddObserver(event, lambda caller, ev: self._syncMarks())
        self._reading = (session, code, nodes, marks)
        done, total = session.progress()
        return f"Case {code} ({done + 1} of {total}), condition {session.condition}. Mark each mediastinal node > 5 mm."

    def _syncMarks(self):
        """Make the saved marks equal the points on screen: new points are saved, moves and deletions too."""
        from SyntheticContrastLib import mrml

        session, code, _, marks = self._reading
        saved = {m["id"]: m for m in session.case_record(code)["marks"]}
        shown = set()
        rating = int(self.getParameterNode().readingRating)
        for i in range(marks.GetNumberOfControlPoints()):
            if not marks.GetNthControlPointPositionVisibility(i) or not marks.GetNthControlPointPositionDefined(i):
                continue
            p = [0.0, 0.0, 0.0]
            marks.GetNthControlPointPositionWorld(i, p)
            lps = list(mrml.LPS_TO_RAS @ p)
            mark_id = marks.GetNthControlPointDescription(i)
            if not mark_id:
                mark_id = session.add_mark(code, lps, rating)
                marks.SetNthControlPointDescription(i, str(mark_id))
                marks.SetNthControlPointLabel(i, f"#{mark_id} ({rating})")
            else:
                mark_id = int(mark_id)
                if list(saved[mark_id]["point_lps"]) != lps:
                    session.edit_mark(code, mark_id, point_lps=lps)
            shown.add(int(mark_id))
        for mark_id in set(saved) - shown:
            session.delete_mark(code, mark_id)

    def startReadingMark(self):
        if not self._reading:
            raise ValueError("Start a reading session first.")
        slicer.app.applicationLogic().GetSelectionNode().SetActivePlaceNodeID(self._reading[3].GetID())
        slicer.modules.markups.logic().StartPlaceMode(False)

    def rerateLastMark(self, p):
        session, code, _, marks = self._reading
        n = marks.GetNumberOfControlPoints()
        if n:
            mark_id, rating = int(marks.GetNthControlPointDescription(n - 1)), int(p.readingRating)
            session.edit_mark(code, mark_id, rating=rating)
            marks.SetNthControlPointLabel(n - 1, f"#{mark_id} ({rating})")

    def nextReadingCase(self, p) -> str:
        if not self._reading:
            raise ValueError("Start a reading session first.")
        session, code, _, _ = self._reading
        return self._loadReadingCase(session, session.complete_case(code))


class SyntheticContrastTest(ScriptedLoadableModuleTest):
    """Slicer self-test: phantom -> demo-model synthesis -> geometry and synthetic marking -> ROIs -> CNR."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_synthesis_and_cnr()

    def test_phantom_synthesis_and_cnr(self):
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

        self.delayDisplay("Generating a phantom and synthesising contrast with the demo model")
        logic = SyntheticContrastLogic()
        logic.ensureDependencies(askConfirmation=False)
        case = make_phantom(9001, PhantomSpec(slices=24))
        ncct = mrml.node_from_volume(slicer.mrmlScene, case.ncct, "Phantom NCCT")
        cect = mrml.node_from_volume(slicer.mrmlScene, case.cect, "Phantom CECT")
        p = logic.getParameterNode()
        p.inputVolume, p.referenceVolume, p.device = ncct, cect, "cpu"
        logic.synthesize(p)
        out = p.outputVolume
        self.assertIn("synthetic", out.GetName().lower())
        self.assertEqual(out.GetAttribute("SyntheticContrast.synthetic"), "true")
        self.assertEqual(out.GetImageData().GetDimensions(), ncct.GetImageData().GetDimensions())
        a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        out.GetIJKToRASMatrix(a)
        ncct.GetIJKToRASMatrix(b)
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(a.GetElement(r, c), b.GetElement(r, c), places=6)

        self.delayDisplay("Placing ROIs from the phantom annotations and computing CNR")
        mrml.markups_from_rois(slicer.mrmlScene, case.annotations)
        table, message = logic.computeCNR(p)
        self.assertEqual(table.GetNumberOfRows(), 3 * len(case.annotations["lesions"]))
        cols = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
        cnr = {}
        for r in range(table.GetNumberOfRows()):
            volume = table.GetCellText(r, cols.index("volume"))
            cnr.setdefault(volume, []).append(float(table.GetCellText(r, cols.index("cnr"))))
        # Real contrast makes the DTA bright: node CNR on CECT must exceed NCCT's on average.
        self.assertGreater(sum(cnr["CECT"]) / len(cnr["CECT"]), sum(cnr["NCCT"]) / len(cnr["NCCT"]))
        logic.showLinkedViews(p)
        self.delayDisplay(f"Test passed. {message}")
