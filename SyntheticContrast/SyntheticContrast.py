"""3D Slicer module: synthetic contrast-enhanced CT from a non-contrast CT, linked views, lymph-node CNR, blinded reading.

The widget only wires the .ui to a parameter node and the Logic. The Logic is a small facade over one collaborator
per concern (SyntheticContrastSlicer): synthesis in a child process, dependencies, views, ROIs and CNR, reading.
"""

import importlib
import pathlib
import sys
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

HELP_URL = "https://github.com/SyntheticContrast/SlicerSyntheticContrast#3d-slicer"
ENGINE_PACKAGES = ("SyntheticContrastLib", "SyntheticContrastSlicer")


class SyntheticContrast(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Synthetic Contrast")
        # "Image Synthesis": the Extensions Index category where users browse for this kind of tool (SlicerModalityConverter
        # is listed there); the top-level CMakeLists.txt declares the same one, and a test keeps the two equal.
        self.parent.categories = [_("Image Synthesis")]
        self.parent.dependencies = []
        self.parent.contributors = ["SyntheticContrast contributors"]
        self.parent.helpText = _(
            "Makes a SYNTHETIC contrast-enhanced CT from a non-contrast chest CT with a 3D pix2pix GAN "
            "(Choi et al., Sci Rep 2021), shows it in linked views, and measures lymph-node CNR from ROIs. "
            "Synthetic images are research results, not acquired scans. The bundled model was trained on "
            "phantoms only and is not for diagnosis."
        ) + f' <a href="{HELP_URL}">{_("Documentation")}</a>'
        self.parent.acknowledgementText = _("Method: Choi JW et al., Sci Rep 11, 20403 (2021).")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    from SyntheticContrastSlicer import sampledata

    sampledata.register(pathlib.Path(__file__).parent / "Resources" / "Icons" / "SyntheticContrast.png")


@parameterNodeWrapper
class SyntheticContrastParameterNode:
    """Panel state; every widget with a SlicerParameterName in the .ui is bound to one of these."""

    inputVolume: vtkMRMLScalarVolumeNode
    referenceVolume: vtkMRMLScalarVolumeNode
    outputVolume: vtkMRMLScalarVolumeNode
    uncertaintyVolume: vtkMRMLScalarVolumeNode  # the sCECT's SD map, when Samples > 1
    model: str = ""  # a model store name (or a card path); empty means the bundled demo model
    device: Annotated[str, Choice(["auto", "cuda", "cpu", "mps"])] = "auto"
    stride: Annotated[int, WithinRange(0, 64)] = 0
    blend: Annotated[str, Choice(["gaussian", "mean"])] = "gaussian"
    batchSize: Annotated[int, WithinRange(0, 64)] = 0  # 0: auto, the planner's choice
    precision: Annotated[str, Choice(["fp32", "auto", "fp16", "bf16"])] = "fp32"
    samples: Annotated[int, WithinRange(1, 64)] = 1
    coronalRow: bool = False
    showOverlay: bool = False
    showUncertainty: bool = False
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    readingStudyDir: pathlib.Path
    readingReader: str = ""
    readingSession: Annotated[int, WithinRange(1, 9)] = 1
    readingRating: float = 3.0  # on the study's rating scale; the spin box takes the scale when a session starts


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
        uiWidget.setMRMLScene(slicer.mrmlScene)  # the .ui passes the scene on to every qMRML widget
        self.logic = SyntheticContrastLogic()
        self._findings = {}

        ui, logic = self.ui, self.logic
        self._connect(ui.applyButton, _("Synthetic contrast could not start."), self.onApply)
        self._connect(ui.cancelButton, _("Cancel failed."), self.onCancel)
        self._connect(ui.showViewsButton, _("Could not show the linked views."), lambda: logic.showLinkedViews(self._parameterNode))
        for button, preset in ((ui.presetMediastinalButton, "mediastinal"), (ui.presetSoftTissueButton, "soft tissue"),
                               (ui.presetLungButton, "lung"), (ui.presetVascularButton, "vascular")):
            self._connect(button, _("Could not apply the window preset."), lambda p=preset: logic.applyWindowPreset(p, self._parameterNode))
        self._connect(ui.addLymphNodeButton, _("Could not start the lymph node line."), logic.startLymphNodeLine)
        for button, name in ((ui.markDTAButton, "dta"), (ui.markRightFatButton, "right_fat"), (ui.markLeftFatButton, "left_fat")):
            self._connect(button, _("Could not start placing the reference point."), lambda n=name: logic.startReferencePoint(n))
        self._connect(ui.computeCNRButton, _("CNR could not be computed."), self.onComputeCNR)
        self._connect(ui.importROIsButton, _("ROI file could not be imported."), self.onImportROIs)
        self._connect(ui.exportROIsButton, _("ROI file could not be written."), self.onExportROIs)
        self._connect(ui.exportDICOMButton, _("DICOM export failed."), self.onExportDICOM)
        self._connect(ui.startReadingButton, _("The reading session could not start."), self.onStartReading)
        self._connect(ui.placeMarkButton, _("Could not start placing a mark."), logic.startReadingMark)
        self._connect(ui.rerateMarkButton, _("Could not change the rating."),
                      lambda: self._setReadingText(logic.rerateLastMark(self._parameterNode)))
        self._connect(ui.nextCaseButton, _("Could not go to the next case."), lambda: self._setReadingText(logic.nextReadingCase()))

        ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChosen)  # a dynamic list: no Choice to bind
        self._populateModels()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()
        qt.QTimer.singleShot(0, lambda: setattr(self.ui.environmentLabel, "text", logic.describeEnvironment()))

    @staticmethod
    def _connect(button, failure: str, action):
        """Every button's action reports its own errors in a dialog; nothing is left to reach only the console."""

        def run(_checked=False):
            try:
                with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
                    action()
            except Exception:
                pass  # already shown to the user by tryWithErrorDisplay

        button.connect("clicked(bool)", run)

    def onReload(self):
        """Developer mode: reload the engine and the Slicer-side package too, not only this file."""
        for name in sorted((n for n in sys.modules if n.split(".")[0] in ENGINE_PACKAGES and "." in n), reverse=True):
            importlib.reload(sys.modules[name])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self):
        self.removeObservers()
        self._releaseParameterNode()
        if self.logic:
            self.logic.cancelSynthesis()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self._releaseParameterNode()

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)
        self.logic.sceneClosed()

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
            self._showRatingScale()
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterChanged)
            self._onParameterChanged()

    def _onParameterChanged(self, caller=None, event=None):
        self._followInputVoxels()
        state = self.logic.panelState(self._parameterNode)
        self.ui.applyButton.enabled = state["canApply"]
        self.ui.applyButton.toolTip = state["applyHint"]
        self.ui.cancelButton.enabled = state["running"]
        self._showChosenModel()
        self._showOutOfDistribution(state["outOfDistribution"])
        if not state["running"]:  # while a run goes, its own plan stands
            self.ui.planLabel.text = state.get("plan", "")
        self.logic.updateOverlay(self._parameterNode)

    def _followInputVoxels(self):
        """A volume's voxels may arrive after its node was chosen (a node combo picks a node as it is added): the
        plan, which needs the voxels' size, is made again when they do."""
        node = self._parameterNode.inputVolume if self._parameterNode else None
        followed = getattr(self, "_followedInput", None)
        if node is followed:
            return
        if followed is not None:
            self.removeObserver(followed, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onParameterChanged)
        if node is not None:
            self.addObserver(node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._onParameterChanged)
        self._followedInput = node

    def _populateModels(self):
        from SyntheticContrastSlicer.models import INSTALL_ENTRY

        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        combo.clear()
        for k, choice in enumerate(self.logic.modelChoices()):
            combo.addItem(choice["name"])
            combo.setItemData(k, choice["tooltip"], qt.Qt.ToolTipRole)
        combo.addItem(_(INSTALL_ENTRY))
        combo.blockSignals(False)
        self._showChosenModel()

    def _showChosenModel(self):
        combo, p = self.ui.modelComboBox, self._parameterNode
        chosen = (p.model if p is not None else "") or self.logic.models.default_name()
        index = combo.findText(chosen)
        combo.blockSignals(True)
        combo.setCurrentIndex(index if index >= 0 else 0)
        combo.blockSignals(False)

    def onModelChosen(self, index):
        combo = self.ui.modelComboBox
        if index != combo.count - 1:
            self._parameterNode.model = combo.itemText(index)
            return
        path = qt.QFileDialog.getOpenFileName(slicer.util.mainWindow(), _("Install a model card"), "", _("Model card (*.json)"))
        if path:
            with slicer.util.tryWithErrorDisplay(_("The model could not be installed."), waitCursor=True):
                self.logic.installModel(path, self._parameterNode)
        self._populateModels()

    def onStartReading(self):
        self._setReadingText(self.logic.startReading(self._parameterNode))
        self._showRatingScale()

    def _showRatingScale(self):
        """The rating box spans the study's own scale, such as 0-100. connectGui resets a float's box to -inf..+inf
        (Slicer's number connector, for a parameter without a fixed range), so this runs after every connectGui too."""
        lo, hi = self.logic.readingScale()
        self.ui.ratingSpinBox.minimum, self.ui.ratingSpinBox.maximum = lo, hi
        if not lo <= self._parameterNode.readingRating <= hi:
            self._parameterNode.readingRating = hi

    def _showOutOfDistribution(self, text):
        """The yellow warning: the sCECT shown comes from an input unlike the model's training data."""
        self.ui.oodLabel.text = text
        self.ui.oodLabel.visible = bool(text)

    def onApply(self):
        self._findings = {}  # this run's, by check: the input's ("ood") and the output's ("plausibility")
        self.ui.environmentLabel.text = self.logic.ensureDependencies()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting the synthesis process...")
        self.logic.startSynthesis(self._parameterNode, self._onSynthesisEvent, self._onSynthesisFinished)
        self._onParameterChanged()

    def onCancel(self):
        self.logic.cancelSynthesis()

    def _onSynthesisEvent(self, event):
        text = self.logic.describeEvent(event)
        if event.get("event") in ("ood", "plausibility"):
            self._findings[event["event"]] = [f["message"] for f in event.get("findings", [])]
            self._showOutOfDistribution(self.logic.outOfDistributionText(self._findings.get("ood"), self._findings.get("plausibility")))
        if event.get("event") == "progress":
            self.ui.progressBar.value = int(round(100 * event.get("fraction", 0)))
        if event.get("event") == "plan":
            self.ui.planLabel.text = _("Plan: {line}").format(line=event.get("line", ""))
        if text:
            self.ui.statusLabel.text = text

    def _onSynthesisFinished(self, result, node):
        self._onParameterChanged()
        if result.state == "done":
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = self.logic.describeResult(result, node)
        elif result.state == "cancelled":
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Cancelled. Nothing was written.")
        else:
            self.ui.statusLabel.text = _("Synthetic contrast failed: {message}").format(message=result.message)
            slicer.util.errorDisplay(_("Synthetic contrast failed.") + f"\n\n{result.message}",
                                     detailedText=self.logic.logText(result))

    def onComputeCNR(self):
        table, message = self.logic.computeCNR(self._parameterNode)
        self.ui.cnrTableView.setMRMLTableNode(table)
        self.ui.statusLabel.text = message

    def onExportDICOM(self):
        folder = qt.QFileDialog.getExistingDirectory(None, _("Folder to create the synthetic series in"))
        if folder:
            self.ui.statusLabel.text = self.logic.exportDICOM(self._parameterNode, folder)

    def _setReadingText(self, text):
        self.ui.readingCaseLabel.text = text

    def onImportROIs(self):
        path = qt.QFileDialog.getOpenFileName(None, _("Import ROI JSON"), "", "ROI JSON (*.json)")
        if path:
            self.logic.importROIs(path)

    def onExportROIs(self):
        path = qt.QFileDialog.getSaveFileName(None, _("Export ROI JSON"), "rois.json", "ROI JSON (*.json)")
        if path:
            self.logic.exportROIs(path)


def _is_synthetic(node) -> bool:
    return node is not None and node.GetAttribute("SyntheticContrast.synthetic") == "true"


def _refuse_synthetic(node, role: str) -> None:
    """A synthetic image is never an input, nor the acquired reference it is compared with (D10)."""
    if _is_synthetic(node):
        raise ValueError(_("{name} is a synthetic image and cannot be {role}; choose an acquired scan.").format(
            name=node.GetName(), role=role))


class SyntheticContrastLogic(ScriptedLoadableModuleLogic):
    """A facade over one collaborator per concern; every method is usable from headless scripts and tests."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from SyntheticContrastSlicer.annotation import AnnotationController
        from SyntheticContrastSlicer.dependencies import DependencyChecker
        from SyntheticContrastSlicer.models import ModelChoices
        from SyntheticContrastSlicer.reading import ReadingController
        from SyntheticContrastSlicer.synthesis import SynthesisController
        from SyntheticContrastSlicer.views import ViewsController

        self.dependencies = DependencyChecker()
        self.models = ModelChoices()
        self.synthesis = SynthesisController()
        self.views = ViewsController()
        self.annotation = AnnotationController()
        self.reading = ReadingController(self.views, lambda: self.getParameterNode().readingRating)

    def getParameterNode(self):
        return SyntheticContrastParameterNode(super().getParameterNode())

    def sceneClosed(self):
        """Nothing the controllers hold may outlive the scene; a running synthesis is cancelled."""
        self.cancelSynthesis()
        for controller in (self.views, self.annotation, self.reading):
            controller.reset()

    # -- dependencies ---------------------------------------------------------------------------------
    def ensureDependencies(self, askConfirmation: bool = True) -> str:
        return self.dependencies.ensure(askConfirmation)

    def describeEnvironment(self) -> str:
        return self.dependencies.describe()

    # -- models ---------------------------------------------------------------------------------------
    def modelChoices(self) -> list[dict]:
        return self.models.choices()

    def installModel(self, cardPath: str, p=None) -> str:
        """Install a model card into the user's store and choose it."""
        name = self.models.install(cardPath)
        if p is not None:
            p.model = name
        return name

    # -- synthesis --------------------------------------------------------------------------------------
    def panelState(self, p) -> dict:
        running = self.synthesis.running
        def attribute(key):
            text = (p.outputVolume.GetAttribute(key) or "") if p is not None and p.outputVolume else ""
            return [] if not text or text.startswith(("none", "not checked")) else [text]

        ood = self.outOfDistributionText(attribute("SyntheticContrast.ood"), attribute("SyntheticContrast.plausibility"))
        if running:
            return {"canApply": False, "running": True, "applyHint": _("A synthesis is running; Cancel stops it."), "outOfDistribution": ""}
        if p is None or not p.inputVolume:
            return {"canApply": False, "running": False, "applyHint": _("Select a non-contrast CT volume"), "outOfDistribution": ood}
        if _is_synthetic(p.inputVolume):
            return {"canApply": False, "running": False, "outOfDistribution": ood, "applyHint": _(
                "{name} is a synthetic image: choose the acquired non-contrast CT").format(name=p.inputVolume.GetName())}
        return {"canApply": True, "running": False, "outOfDistribution": ood, "plan": self.planText(p),
                "applyHint": _("Synthesise contrast for {name}").format(name=p.inputVolume.GetName())}

    def planText(self, p) -> str:
        """The planner's line for this input and model before Apply; a card it cannot read or plan says why."""
        from SyntheticContrastLib.errors import SyntheticContrastError
        from SyntheticContrastSlicer.synthesis import plan_text

        if p.inputVolume.GetImageData() is None:
            return ""
        try:
            return plan_text(p, self.models.card(p.model))
        except (SyntheticContrastError, ValueError, OSError) as exc:
            return _("No plan: {problem}").format(problem=exc)

    @staticmethod
    def outOfDistributionText(messages, implausible=None) -> str:
        """The panel's warning for the input's out-of-distribution findings and the output's implausible
        enhancement; empty when there are neither."""
        parts = []
        if messages:
            parts.append(_("Do not trust this synthetic image: the input is unlike the model's training data.") + "\n- "
                         + "\n- ".join(messages))
        if implausible:
            parts.append(_("Do not trust this synthetic image: its enhancement breaks what contrast can do.") + "\n- "
                         + "\n- ".join(implausible))
        return "\n".join(parts)

    def startSynthesis(self, p, onEvent=None, onFinished=None):
        """Start the engine CLI in a child process; ``onFinished(result, node)`` runs when it has ended."""
        _refuse_synthetic(p.inputVolume, _("the input"))
        return self.synthesis.start(p, onEvent, onFinished)

    def cancelSynthesis(self):
        return self.synthesis.cancel()

    def synthesize(self, p, progress=None, cancel=None) -> str:
        """In this process (headless scripts, the self-test): blocks until done; returns the status line."""
        node, report, findings = self.synthesis.synthesize_in_process(p, progress, cancel)
        notes = "; ".join(report.notes + [f.line() for f in findings])
        return f"{node.GetName()}: {report.windows} windows, stride {report.stride}, {report.device}." + (f" {notes}" if notes else "")

    @staticmethod
    def describeEvent(event) -> str:
        kind = event.get("event")
        if kind == "ood" and not event.get("checked", True):
            return _("Note: this model card has no training statistics, so out-of-distribution checks were not run.")
        if kind == "progress":
            eta = event.get("eta_s")
            return _("Synthesising on {device}: window {done} of {total}").format(
                device=event.get("device", "?"), done=event.get("windows_done"), total=event.get("windows_total")
            ) + (f", {eta:.0f} s left" if eta is not None else "")
        if kind == "warning":
            return _("Note: {message}").format(message=event.get("message", ""))
        return ""

    @staticmethod
    def describeResult(result, node) -> str:
        done = result.done_event
        notes = "; ".join(done.get("notes", []))
        return (f"{node.GetName()}: {done.get('windows')} windows, stride {done.get('stride')}, {done.get('device')}. "
                + _("SYNTHETIC image, not acquired.") + (f" {notes}" if notes else ""))

    @staticmethod
    def logText(result) -> str:
        path = pathlib.Path(result.log_path)
        text = path.read_text("utf-8", "replace") if path.exists() else ""
        return f"Full log: {path}\n\n{text}"

    def exportDICOM(self, p, parentFolder) -> str:
        """Write the sCECT as a derived DICOM series (new folder) in the study of the DICOM input it came from."""
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.io.dicom_export import export_dicom_series

        if not p.outputVolume or p.outputVolume.GetAttribute("SyntheticContrast.synthetic") != "true":
            raise ValueError(_("Run the synthesis first: only a synthetic volume made here can be exported."))
        uids = (p.inputVolume.GetAttribute("DICOM.instanceUIDs") or "").split()
        if not uids:
            raise ValueError(_("The input was not loaded from DICOM, so there is no study to add the synthetic series to."))
        # The export finds each slice's source image (or Enhanced CT frame) by position, so file order does not matter.
        files = [slicer.dicomDatabase.fileForInstance(uid) for uid in uids]
        from SyntheticContrastLib.fileio import safe_file_name

        # DICOM-loaded nodes are named "1: Chest ...": ':' is not allowed in a Windows file name.
        out = pathlib.Path(parentFolder) / f"{safe_file_name(p.inputVolume.GetName())}_SYNTHETIC_CONTRAST"
        written = export_dicom_series(mrml.volume_from_node(p.outputVolume), out, files,
                                      p.outputVolume.GetAttribute("SyntheticContrast.model_id"),
                                      p.outputVolume.GetAttribute("SyntheticContrast.model_sha256"),
                                      findings=p.outputVolume.GetAttribute("SyntheticContrast.ood") or "",
                                      plausibility=p.outputVolume.GetAttribute("SyntheticContrast.plausibility") or "")
        return f"Wrote {len(written)} slices of a SYNTHETIC CONTRAST series to {out}."

    # -- views -------------------------------------------------------------------------------------------
    def showLinkedViews(self, p):
        _refuse_synthetic(p.referenceVolume, _("the reference CECT"))
        volumes = [v for v in (p.inputVolume, p.outputVolume, p.referenceVolume) if v]
        if len(volumes) < 2:
            raise ValueError(_("Run the synthesis first: the linked views need the NCCT and its sCECT."))
        self.views.show_linked(volumes, ["NCCT", "sCECT", "CECT"][: len(volumes)], p.coronalRow)

    def applyWindowPreset(self, name, p):
        self.views.apply_preset(name, p.inputVolume)

    def updateOverlay(self, p):
        if p is not None:
            self.views.update_overlay(p.inputVolume, p.outputVolume, p.showOverlay, p.overlayOpacity)
            self.views.update_uncertainty(p.outputVolume, p.uncertaintyVolume, p.showUncertainty, p.overlayOpacity)

    # -- ROIs and CNR ------------------------------------------------------------------------------------
    # ROIs belong to the case of the chosen NCCT: another patient's in the same scene are never measured here.
    def startLymphNodeLine(self):
        return self.annotation.start_lymph_node_line(self.getParameterNode().inputVolume)

    def startReferencePoint(self, name, lesionId=None):
        return self.annotation.start_reference_point(name, lesionId, self.getParameterNode().inputVolume)

    def computeCNR(self, p):
        """CNR on NCCT, sCECT and the reference CECT from the scene's ROIs, into this case's one table."""
        if not p.inputVolume:
            raise ValueError(_("Select the non-contrast CT first."))
        _refuse_synthetic(p.inputVolume, _("the non-contrast CT"))
        _refuse_synthetic(p.referenceVolume, _("the reference CECT"))
        volumes = {name: node for name, node in (("NCCT", p.inputVolume), ("sCECT (synthetic)", p.outputVolume),
                                                 ("CECT", p.referenceVolume)) if node}
        sd_maps = {"sCECT (synthetic)": p.uncertaintyVolume} if p.outputVolume and p.uncertaintyVolume else {}
        return self.annotation.compute_cnr(volumes, p.inputVolume, sd_maps)

    def importROIs(self, path):
        return self.annotation.import_rois(path, self.getParameterNode().inputVolume)

    def exportROIs(self, path):
        self.annotation.export_rois(path, self.getParameterNode().inputVolume)

    # -- blinded reading ---------------------------------------------------------------------------------
    def startReading(self, p) -> str:
        return self.reading.start(p.readingStudyDir, p.readingReader, p.readingSession)

    def readingScale(self) -> tuple[float, float]:
        """The running study's rating scale (lowest, highest); the paper's 1-4 before a session starts."""
        return self.reading.scale()

    def startReadingMark(self):
        self.reading.start_mark()

    def rerateLastMark(self, p) -> str:
        return self.reading.rerate_last(p.readingRating)

    def nextReadingCase(self) -> str:
        return self.reading.next_case()


class SyntheticContrastTest(ScriptedLoadableModuleTest):
    """Slicer self-test: phantom -> demo-model synthesis (child process) -> synthetic marking -> ROIs -> CNR."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_synthesis_and_cnr()

    def test_phantom_synthesis_and_cnr(self):
        from SyntheticContrastLib import mrml
        from SyntheticContrastLib.phantom import PhantomSpec, make_phantom

        self.delayDisplay("Generating a phantom and synthesising contrast with the demo model in a child process")
        logic = SyntheticContrastLogic()
        logic.ensureDependencies(askConfirmation=False)
        case = make_phantom(9001, PhantomSpec(slices=24))
        ncct = mrml.node_from_volume(slicer.mrmlScene, case.ncct, "Phantom NCCT")
        cect = mrml.node_from_volume(slicer.mrmlScene, case.cect, "Phantom CECT")
        p = logic.getParameterNode()
        p.inputVolume, p.referenceVolume, p.device = ncct, cect, "cpu"
        finished = []
        logic.startSynthesis(p, None, lambda result, node: finished.append(result))
        while not finished:
            self.delayDisplay("waiting for the synthesis process", 200)  # the module's QTimer polls meanwhile
        self.assertEqual(finished[0].state, "done", finished[0].message)
        out = p.outputVolume
        self.assertIn("synthetic", out.GetName().lower())
        self.assertEqual(out.GetAttribute("SyntheticContrast.synthetic"), "true")
        self.assertEqual(out.GetImageData().GetDimensions(), ncct.GetImageData().GetDimensions())

        self.delayDisplay("Placing ROIs from the phantom annotations and computing CNR")
        mrml.markups_from_rois(slicer.mrmlScene, case.annotations, p.inputVolume)
        table, message = logic.computeCNR(p)
        self.assertEqual(table.GetNumberOfRows(), 3 * len(case.annotations["lesions"]))
        cnr = {}
        for r in range(table.GetNumberOfRows()):
            cnr.setdefault(table.GetCellText(r, table.GetColumnIndex("volume")), []).append(float(table.GetCellText(r, table.GetColumnIndex("cnr"))))
        # Real contrast makes the DTA bright: node CNR on CECT must exceed NCCT's on average.
        self.assertGreater(sum(cnr["CECT"]) / len(cnr["CECT"]), sum(cnr["NCCT"]) / len(cnr["NCCT"]))
        logic.showLinkedViews(p)
        self.delayDisplay(f"Test passed. {message}")
