"""A click harness for the Slicer module: real MRML from PyPI slicer-core (scene, selection and interaction nodes,
markups logic, layout logic, an offscreen slice view with the markups displayable manager) plus small stand-ins of
our own for what slicer-core lacks: Qt (a driven QTimer), ``slicer.app``, parameterNodeWrapper and the
ScriptedLoadableModule base classes. No Slicer code is copied; the stand-ins only record and answer."""

from __future__ import annotations

import contextlib
import os
import pathlib
import sys
import types
import typing
import unittest
import xml.etree.ElementTree as ET

import slicer
import slicer.util
import vtk

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SyntheticContrast"


# --- Qt stand-ins ---------------------------------------------------------------------------------

class Signal:
    """A Qt signal as PythonQt shows it: connect a callable, emit calls them all."""

    def __init__(self):
        self.slots = []

    def connect(self, *args):
        self.slots.append(args[-1])

    def disconnect(self, *args):
        self.slots.clear()

    def emit(self, *args):
        for slot in list(self.slots):
            slot(*args)


class QTimer:
    """A timer the test drives: ``fire()`` is one timeout, exactly what Qt's event loop would deliver."""

    instances: list["QTimer"] = []

    def __init__(self, parent=None):
        self.timeout = Signal()
        self.interval = 0
        self.active = False
        QTimer.instances.append(self)

    def setInterval(self, ms):
        self.interval = ms

    def start(self, ms=None):
        if ms is not None:
            self.interval = ms
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active

    def fire(self):
        if self.active:
            self.timeout.emit()

    @staticmethod
    def singleShot(ms, callback):
        callback()


class QComboBox:
    """The calls the panel makes on a combo box, as PythonQt shows them (``count`` and ``currentIndex`` are
    properties); ``select`` is a user's choice, which emits currentIndexChanged(int) unless signals are blocked."""

    def __init__(self):
        self.items, self.data, self.currentIndex = [], {}, -1
        self._slots, self._blocked = [], False

    def connect(self, signal, slot):
        assert signal == "currentIndexChanged(int)", signal
        self._slots.append(slot)

    def blockSignals(self, blocked):
        self._blocked = bool(blocked)

    def clear(self):
        self.items, self.data, self.currentIndex = [], {}, -1

    def addItem(self, text):
        self.items.append(text)
        if self.currentIndex < 0:
            self.setCurrentIndex(0)

    def setItemData(self, index, value, role):
        self.data[(index, role)] = value

    @property
    def count(self):
        return len(self.items)

    def itemText(self, index):
        return self.items[index]

    def findText(self, text):
        return self.items.index(text) if text in self.items else -1

    def setCurrentIndex(self, index):
        changed, self.currentIndex = index != self.currentIndex, index
        if changed and not self._blocked:
            for slot in list(self._slots):
                slot(index)

    def select(self, index):
        self.setCurrentIndex(index)


def _qt_module() -> types.ModuleType:
    qt = types.ModuleType("qt")
    qt.QTimer = QTimer
    qt.QObject = object
    qt.QComboBox = QComboBox
    qt.Qt = types.SimpleNamespace(WaitCursor=3, ToolTipRole=3)

    class QFileDialog:
        answers: list[str] = []

        @classmethod
        def _answer(cls, *args, **kwargs):
            return cls.answers.pop(0) if cls.answers else ""

        getExistingDirectory = getOpenFileName = getSaveFileName = _answer

    class QDesktopServices:
        opened: list = []

        @classmethod
        def openUrl(cls, url):
            cls.opened.append(url)
            return True

    qt.QFileDialog = QFileDialog
    qt.QDesktopServices = QDesktopServices
    qt.QUrl = types.SimpleNamespace(fromLocalFile=lambda path: f"file://{path}")
    return qt


# --- parameterNodeWrapper stand-in ------------------------------------------------------------------

class _Choice:
    def __init__(self, choices):
        self.choices = list(choices)


class _WithinRange:
    def __init__(self, lo, hi):
        self.lo, self.hi = lo, hi


def _unwrap(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        return typing.get_args(annotation)[0]
    return annotation


def parameterNodeWrapper(cls):
    """Typed attributes stored in a vtkMRMLScriptedModuleNode, as Slicer's wrapper does: MRML nodes as node
    references, everything else as text. An unset Path reads as ``Path()`` (that is, '.'), as in Slicer."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {name: _unwrap(t) for name, t in hints.items()}
    defaults = {name: getattr(cls, name) for name in fields if hasattr(cls, name)}
    ranges = {name: next((a for a in typing.get_args(t)[1:] if isinstance(a, _WithinRange)), None)
              for name, t in hints.items() if typing.get_origin(t) is typing.Annotated}

    class Wrapper:
        allFields = fields
        allRanges = ranges  # each parameter's WithinRange, which Slicer's number connectors give the bound widget

        def __init__(self, node):
            object.__setattr__(self, "parameterNode", node)
            for name, value in defaults.items():
                if not node.GetParameter(name):
                    setattr(self, name, value)

        def __getattr__(self, name):
            if name in ("AddObserver", "RemoveObserver", "HasObserver"):  # as Slicer's wrapper, the node's own
                return getattr(self.parameterNode, name)
            if name not in fields:
                raise AttributeError(name)
            kind, node = fields[name], self.parameterNode
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if kind is bool:
                return text == "True"
            if kind in (int, float):
                return kind(text) if text else kind()
            if kind is pathlib.Path:
                return pathlib.Path(text)
            return text

        def __setattr__(self, name, value):
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            kind, node = fields[name], self.parameterNode
            if isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                node.SetParameter(name, "" if value is None else str(value))

        def connectGui(self, ui):
            # On real Qt widgets (tests/qt_panel.py) the binding is real; the namespace stand-ins have nothing to bind.
            if type(ui).__name__ == "UiVariables":
                from qt_panel import GuiBinding

                return GuiBinding(self, ui)
            return object()

        def disconnectGui(self, tag):
            if hasattr(tag, "disconnect"):
                tag.disconnect()

        def __bool__(self):
            return True

    Wrapper.__name__ = cls.__name__
    return Wrapper


# --- ScriptedLoadableModule stand-ins -----------------------------------------------------------------

class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent

    def setup(self):
        # In Slicer the module panel's layout; here a real Qt parent's, when a test gives one (tests/qt_panel.py).
        if self.parent is not None and hasattr(self.parent, "layout"):
            from qt_panel import PythonQt

            self.layout = PythonQt(self.parent.layout())

    def resourcePath(self, name):
        return str(MODULE_DIR / "Resources" / name)


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=0):
        pass


# --- slicer.app and its layout manager ----------------------------------------------------------------

class LayoutManager:
    """What qMRMLLayoutManager does for MRML: switch the arrangement (the real layout logic then adds the
    slice nodes) and give each slice view a real slice logic (which adds its composite node)."""

    def __init__(self, scene, app_logic):
        self._logic = slicer.vtkMRMLLayoutLogic()
        self._logic.SetMRMLScene(scene)
        self._scene, self._app_logic, self._slice_logics = scene, app_logic, {}

    def layoutLogic(self):
        return self._logic

    def setLayout(self, layout_id):
        self._logic.GetLayoutNode().SetViewArrangement(layout_id)
        for node in slicer.util.getNodesByClass("vtkMRMLSliceNode", self._scene):
            if node.GetLayoutName() not in self._slice_logics:
                logic = slicer.vtkMRMLSliceLogic()
                logic.SetMRMLApplicationLogic(self._app_logic)
                logic.SetMRMLScene(self._scene)
                logic.SetSliceNode(node)
                self._slice_logics[node.GetLayoutName()] = logic

    def sliceLogic(self, layout_name):
        return self._slice_logics[layout_name]


class SlicerApp:
    """``slicer.app``: the application logic, a layout manager, and a count of processEvents() calls."""

    def __init__(self, scene, app_logic):
        self._app_logic = app_logic
        self._layout_manager = LayoutManager(scene, app_logic)
        self.process_events_calls = 0
        self.connections = []
        self.slicerHome = ""
        self.exit_code = None

    def applicationLogic(self):
        return self._app_logic

    def connect(self, signal, slot):
        self.connections.append((signal, slot))

    def testingEnabled(self):
        return False

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def layoutManager(self):
        return self._layout_manager

    def processEvents(self):
        self.process_events_calls += 1

    def exit(self, code=0):
        self.exit_code = code


# --- the offscreen slice view that takes clicks ----------------------------------------------------------

class SliceView:
    """A real slice view: renderer, offscreen window, interactor, Slicer's slice-view interactor style and the
    markups displayable manager. ``click(ras)`` is a mouse move, press and release at that point."""

    SIZE = 400

    def __init__(self, harness, layout_name="Red", field_of_view_mm=400.0):
        scene, app = harness.scene, harness.app_logic
        self.node = scene.AddNewNodeByClass("vtkMRMLSliceNode", layout_name)
        self.node.SetLayoutName(layout_name)
        self.node.SetOrientationToAxial()
        self.node.SetDimensions(self.SIZE, self.SIZE, 1)
        self.node.SetFieldOfView(field_of_view_mm, field_of_view_mm, 1.0)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app)
        self.logic.SetMRMLScene(scene)
        self.logic.SetSliceNode(self.node)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(self.SIZE, self.SIZE)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        # As qMRMLSliceView: a passive VTK style, so no VTK camera style grabs the mouse between press and release.
        self.interactor.SetInteractorStyle(vtk.vtkInteractorStyleUser())
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(app)
        if not factory.IsDisplayableManagerRegistered("vtkMRMLMarkupsDisplayableManager"):
            factory.RegisterDisplayableManager("vtkMRMLMarkupsDisplayableManager")
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.node)
        self.style = slicer.vtkMRMLSliceViewInteractorStyle()
        self.style.SetDisplayableManagers(self.managers)
        self.style.SetSliceLogic(self.logic)
        self.style.SetInteractor(self.interactor)
        self.interactor.Initialize()
        self.window.Render()

    def _display_xy(self, ras):
        self.node.JumpSliceByOffsetting(*ras)
        ras_to_xy = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(self.node.GetXYToRAS(), ras_to_xy)
        x, y, _, _ = ras_to_xy.MultiplyPoint((*ras, 1.0))
        return int(round(x)), int(round(y))

    def click(self, ras, button="Left"):
        x, y = self._display_xy(ras)
        self.interactor.SetEventInformation(x, y, 0, 0, "\0", 0)
        self.interactor.MouseMoveEvent()
        getattr(self.interactor, f"{button}ButtonPressEvent")()
        getattr(self.interactor, f"{button}ButtonReleaseEvent")()
        self.window.Render()

    def close(self):
        self.style.SetInteractor(None)
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()


# --- the whole harness ------------------------------------------------------------------------------------

class Harness:
    """One fresh scene with Slicer's logics, installed as ``slicer.mrmlScene``, ``slicer.app`` and friends."""

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.colors = slicer.vtkMRMLColorLogic()
        self.colors.SetMRMLScene(self.scene)
        self.markups_logic = slicer.vtkSlicerMarkupsLogic()
        self.markups_logic.SetMRMLApplicationLogic(self.app_logic)
        self.markups_logic.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic("Markups", self.markups_logic)
        self.app = SlicerApp(self.scene, self.app_logic)
        self.messages: list[tuple[str, str]] = []  # (kind, text) of every dialog the module showed
        self.confirm_answers: list[bool] = []
        self.views: list[SliceView] = []

    @property
    def selection(self):
        return self.app_logic.GetSelectionNode()

    @property
    def interaction(self):
        return self.app_logic.GetInteractionNode()

    def slice_view(self, layout_name="Red") -> SliceView:
        view = SliceView(self, layout_name)
        self.views.append(view)
        return view

    def close(self):
        for view in self.views:
            view.close()
        self.colors.SetMRMLScene(None)
        self.markups_logic.SetMRMLScene(None)
        self.app_logic.SetMRMLScene(None)


def _load_volume(path, properties=None, returnNode=False):
    """As slicer.util.loadVolume: a volume node read by a real archetype storage node that keeps the file name."""
    properties = properties or {}
    scene = slicer.mrmlScene
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", properties.get("name", pathlib.Path(path).name.split(".")[0]))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    if not storage.ReadData(node):
        raise RuntimeError(f"could not load {path}")
    node.SetAndObserveStorageNodeID(storage.GetID())
    node.CreateDefaultDisplayNodes()
    return node


def _save_node(node, filename, properties=None):
    """As slicer.util.saveNode for a scalar volume: its (archetype) storage node writes the file."""
    storage = node.GetStorageNode() or node.CreateDefaultStorageNode()
    if storage.GetScene() is None:
        slicer.mrmlScene.AddNode(storage)
        node.SetAndObserveStorageNodeID(storage.GetID())
    storage.SetFileName(str(filename))
    return bool(storage.WriteData(node))


@contextlib.contextmanager
def installed(real_qt: bool = False):
    """Install the harness as the ``slicer``/``qt`` environment of the module; yields the Harness. ``real_qt``:
    ``slicer.util.loadUI`` gives the .ui as real PySide6 widgets (tests/qt_panel.py)."""
    harness = Harness()
    QTimer.instances.clear()
    saved_modules = {name: sys.modules.get(name) for name in ("qt", "slicer.parameterNodeWrapper", "slicer.ScriptedLoadableModule", "slicer.i18n")}
    saved_util = {name: getattr(slicer.util, name, None) for name in (
        "errorDisplay", "warningDisplay", "infoDisplay", "confirmOkCancelDisplay", "confirmYesNoDisplay", "loadVolume", "saveNode", "pip_install",
        "loadUI", "childWidgetVariables", "mainWindow")}
    saved_attrs = {name: getattr(slicer, name, None) for name in ("app", "mrmlScene", "modules", "parameterNodeWrapper", "ScriptedLoadableModule", "i18n", "dicomDatabase")}

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper, pnw.Choice, pnw.WithinRange = parameterNodeWrapper, _Choice, _WithinRange
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget, ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    qt = _qt_module()
    if real_qt:
        import qt_panel
        from PySide6 import QtCore

        qt.Qt = QtCore.Qt  # item roles and the like must be Qt's own for real combo boxes
        slicer.util.loadUI, slicer.util.childWidgetVariables = qt_panel.load_ui, qt_panel.UiVariables
        slicer.util.mainWindow = lambda: None
    sys.modules.update({"qt": qt, "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm, "slicer.i18n": i18n})
    slicer.parameterNodeWrapper, slicer.ScriptedLoadableModule, slicer.i18n = pnw, slm, i18n
    slicer.app, slicer.mrmlScene = harness.app, harness.scene
    slicer.modules = types.SimpleNamespace(
        markups=types.SimpleNamespace(logic=lambda: harness.markups_logic),
        syntheticcontrast=types.SimpleNamespace(path=str(MODULE_DIR / "SyntheticContrast.py")),
    )

    def record(kind):
        def show(text, *args, **kwargs):
            harness.messages.append((kind, str(text)))
        return show

    def confirm(text, *args, **kwargs):
        harness.messages.append(("confirm", str(text)))
        return harness.confirm_answers.pop(0) if harness.confirm_answers else False

    slicer.util.errorDisplay, slicer.util.warningDisplay, slicer.util.infoDisplay = record("error"), record("warning"), record("info")
    slicer.util.confirmOkCancelDisplay = slicer.util.confirmYesNoDisplay = confirm
    slicer.util.loadVolume, slicer.util.saveNode = _load_volume, _save_node
    def pip_install(requirements):
        # As Slicer's own does (Base/Python/slicer/util.py): a string is split as a POSIX shell splits it, a list is
        # passed to pip as it is.
        import shlex

        args = shlex.split(requirements) if isinstance(requirements, str) else list(requirements)
        harness.messages.append(("pip_install", args))

    slicer.util.pip_install = pip_install
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        yield harness
    finally:
        harness.close()
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for name, value in saved_util.items():
            setattr(slicer.util, name, value)
        for name, value in saved_attrs.items():
            setattr(slicer, name, value)


def import_module_fresh(name="SyntheticContrast"):
    """Import the Slicer module (and its Slicer-side package) against the installed stand-ins."""
    for mod in [m for m in sys.modules if m == name or m.startswith(name + "Slicer")]:
        del sys.modules[mod]
    __import__(name)
    return sys.modules[name]


def ui_tree(path=MODULE_DIR / "Resources" / "UI" / "SyntheticContrast.ui"):
    return ET.parse(path)
