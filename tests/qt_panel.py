"""The module's panel as real Qt widgets: the .ui loaded by PySide6's QUiLoader, Slicer's custom widgets as small
real-Qt classes of our own (a node combo on slicer-core's scene, a collapsible group, a slider, a path field, a table
view), an adapter that speaks PythonQt (Qt properties read and written as attributes, ``connect('signal(int)',
slot)``), and the parameter-node binding that Slicer's parameterNodeWrapper gives widgets with a SlicerParameterName.
No Slicer or CTK code is copied: each class does only what the panel uses."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import slicer  # noqa: E402
import vtk  # noqa: E402
from PySide6 import QtCore, QtWidgets  # noqa: E402
from PySide6.QtUiTools import QUiLoader  # noqa: E402


def application() -> QtWidgets.QApplication:
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


# --- Slicer's and CTK's widgets, as much of them as the panel uses ---------------------------------------------------

class qMRMLWidget(QtWidgets.QWidget):
    """The panel's top widget. Its .ui connects mrmlSceneChanged to each MRML child's setMRMLScene; those
    connections name vtk types PySide6 cannot declare, so setMRMLScene passes the scene on itself."""

    def setMRMLScene(self, scene):
        for child in self.findChildren(QtWidgets.QWidget):
            if isinstance(child, (qMRMLNodeComboBox, qMRMLTableView)):
                child.setMRMLScene(scene)


class ctkCollapsibleButton(QtWidgets.QGroupBox):
    """A titled group whose ``text`` is the title; ``collapsed`` hides its contents."""

    def _text(self):
        return self.title()

    def _set_text(self, text):
        self.setTitle(text)

    def _collapsed(self):
        return getattr(self, "_is_collapsed", False)

    def _set_collapsed(self, collapsed):
        self._is_collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not collapsed)

    text = QtCore.Property(str, _text, _set_text)
    collapsed = QtCore.Property(bool, _collapsed, _set_collapsed)


class qMRMLNodeComboBox(QtWidgets.QComboBox):
    """A combo of the scene's nodes of ``nodeTypes`` (plus "None" when ``noneEnabled``), kept current as nodes are
    added to and removed from the scene; each item's data is the node's ID."""

    currentNodeChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._types, self._none, self._scene, self._tags = [], False, None, []
        self._show_children = self._add = self._remove = False
        self.currentIndexChanged.connect(lambda _index: self.currentNodeChanged.emit(self.currentNode()))

    def _get_types(self):
        return self._types

    def _set_types(self, types):
        self._types = list(types)
        self._refresh()

    def _get_none(self):
        return self._none

    def _set_none(self, enabled):
        self._none = bool(enabled)
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _get_types, _set_types)
    noneEnabled = QtCore.Property(bool, _get_none, _set_none)
    showChildNodeTypes = QtCore.Property(bool, lambda self: self._show_children, lambda self, v: setattr(self, "_show_children", v))
    addEnabled = QtCore.Property(bool, lambda self: self._add, lambda self, v: setattr(self, "_add", v))
    removeEnabled = QtCore.Property(bool, lambda self: self._remove, lambda self, v: setattr(self, "_remove", v))

    def setMRMLScene(self, scene):
        for tag in self._tags:
            self._scene.RemoveObserver(tag)
        self._scene, self._tags = scene, []
        if scene is not None:
            self._tags = [scene.AddObserver(event, lambda *args: self._refresh())
                          for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent)]
        self._refresh()

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = []
        for kind in self._types:
            nodes += [n for n in slicer.util.getNodesByClass(kind, self._scene)
                      if self._show_children or n.GetClassName() == kind]
        return nodes

    def _refresh(self):
        current = self.currentData()
        self.blockSignals(True)
        self.clear()
        if self._none:
            self.addItem("None", None)
        for node in self._nodes():
            self.addItem(node.GetName(), node.GetID())
        index = self.findData(current) if current else -1
        self.setCurrentIndex(index if index >= 0 else (0 if self.count() else -1))
        self.blockSignals(False)
        if self.currentData() != current:
            self.currentNodeChanged.emit(self.currentNode())

    def currentNode(self):
        node_id = self.currentData()
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def setCurrentNode(self, node):
        index = self.findData(node.GetID()) if node is not None else (0 if self._none else -1)
        if index != self.currentIndex():
            self.setCurrentIndex(index)


class qMRMLTableView(QtWidgets.QTableWidget):
    """Shows a vtkMRMLTableNode's table: one column per vtk array, one row per table row."""

    def setMRMLScene(self, scene):
        self._scene = scene

    def setMRMLTableNode(self, node):
        table = node.GetTable() if node is not None else None
        columns = table.GetNumberOfColumns() if table is not None else 0
        rows = table.GetNumberOfRows() if table is not None else 0
        self.setColumnCount(columns)
        self.setRowCount(rows)
        self.setHorizontalHeaderLabels([table.GetColumnName(c) for c in range(columns)] if table is not None else [])
        for r in range(rows):
            for c in range(columns):
                self.setItem(r, c, QtWidgets.QTableWidgetItem(str(table.GetValue(r, c))))


class ctkSliderWidget(QtWidgets.QDoubleSpinBox):
    """A number with a range and a step: a double spin box, whose valueChanged(double) the panel binds."""


class ctkPathLineEdit(QtWidgets.QLineEdit):
    """A path typed or chosen; ``currentPath`` is its text and currentPathChanged(QString) follows it."""

    currentPathChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._filters = 0
        self.textChanged.connect(self.currentPathChanged.emit)

    currentPath = QtCore.Property(str, QtWidgets.QLineEdit.text, QtWidgets.QLineEdit.setText)
    filters = QtCore.Property(int, lambda self: self._filters, lambda self, v: setattr(self, "_filters", int(v)))


CUSTOM_WIDGETS = (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLTableView, ctkSliderWidget, ctkPathLineEdit)


# --- PythonQt's view of a widget ----------------------------------------------------------------------------------

def _unwrap(value):
    return value.qt if isinstance(value, PythonQt) else value


class PythonQt:
    """A Qt object as Slicer's Python sees it: its Qt properties are attributes (``button.enabled = False``,
    ``combo.count``), ``connect("clicked(bool)", slot)`` connects a signal by its signature, and methods pass through
    with wrapped arguments unwrapped."""

    def __init__(self, qt_object):
        object.__setattr__(self, "qt", qt_object)

    def _is_property(self, name) -> bool:
        meta = self.qt.metaObject()
        return meta.indexOfProperty(name) >= 0 or name.encode() in [bytes(p) for p in self.qt.dynamicPropertyNames()]

    def __getattr__(self, name):
        if self._is_property(name):
            return self.qt.property(name)
        attribute = getattr(self.qt, name)
        if callable(attribute) and not isinstance(attribute, QtCore.SignalInstance):
            return lambda *args: attribute(*(_unwrap(a) for a in args))
        return attribute

    def __setattr__(self, name, value):
        if not self._is_property(name):
            raise AttributeError(f"{type(self.qt).__name__} {self.qt.objectName()!r} has no Qt property {name!r}")
        self.qt.setProperty(name, value)

    def connect(self, signature: str, slot):
        getattr(self.qt, signature.split("(")[0]).connect(slot)


def load_ui(path) -> PythonQt:
    """slicer.util.loadUI: the .ui as real widgets, Slicer's own classes replaced by the ones above."""
    application()
    loader = QUiLoader()
    for cls in CUSTOM_WIDGETS:
        loader.registerCustomWidget(cls)
    handle = QtCore.QFile(str(path))
    handle.open(QtCore.QFile.ReadOnly)
    widget = loader.load(handle)
    handle.close()
    if widget is None:
        raise RuntimeError(f"QUiLoader could not load {path}: {loader.errorString()}")
    return PythonQt(widget)


class UiVariables:
    """slicer.util.childWidgetVariables: every named child, by its objectName, seen through PythonQt."""

    def __init__(self, root: PythonQt):
        for child in root.qt.findChildren(QtCore.QObject):
            if child.objectName() and not child.objectName().startswith("qt_"):
                setattr(self, child.objectName(), PythonQt(child))


# --- the parameter node's binding to widgets -------------------------------------------------------------------

def _parameter_widgets(ui: UiVariables):
    for name, wrapped in vars(ui).items():
        parameter = wrapped.qt.property("SlicerParameterName")
        if parameter:
            yield parameter, wrapped.qt


def _widget_value(widget):
    if isinstance(widget, qMRMLNodeComboBox):
        return widget.currentNode()
    if isinstance(widget, QtWidgets.QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QtWidgets.QComboBox):
        return widget.currentText()
    if isinstance(widget, ctkPathLineEdit):
        return pathlib.Path(widget.text()) if widget.text() else None
    if isinstance(widget, QtWidgets.QAbstractSpinBox):
        return widget.value()
    return widget.text()


def _show_value(widget, value):
    widget.blockSignals(True)
    try:
        if isinstance(widget, qMRMLNodeComboBox):
            widget.setCurrentNode(value)
        elif isinstance(widget, QtWidgets.QCheckBox):
            widget.setChecked(bool(value))
        elif isinstance(widget, QtWidgets.QComboBox):
            widget.setCurrentIndex(max(0, widget.findText(str(value))))
        elif isinstance(widget, ctkPathLineEdit):
            widget.setText("" if value is None or str(value) == "." else str(value))
        elif isinstance(widget, QtWidgets.QAbstractSpinBox):
            widget.setValue(value)
        else:
            widget.setText(str(value))
    finally:
        widget.blockSignals(False)


def _change_signal(widget):
    if isinstance(widget, qMRMLNodeComboBox):
        return widget.currentNodeChanged
    if isinstance(widget, QtWidgets.QCheckBox):
        return widget.toggled
    if isinstance(widget, QtWidgets.QComboBox):
        return widget.currentTextChanged
    if isinstance(widget, ctkPathLineEdit):
        return widget.currentPathChanged
    if isinstance(widget, QtWidgets.QAbstractSpinBox):
        return widget.valueChanged
    return widget.textChanged


def _connector_range(widget, kind, within) -> None:
    """What Slicer's number connectors do to a bound spin box on every connectGui (guiConnectors.py, 5.6.2 to main):
    the range becomes the parameter's WithinRange, or unbounded when it has none, whatever the .ui said."""
    if not isinstance(widget, QtWidgets.QAbstractSpinBox) or kind not in (int, float):
        return
    if within is not None:
        widget.setRange(within.lo, within.hi)
    elif isinstance(widget, ctkSliderWidget):
        raise RuntimeError("Slicer refuses to bind a ctkSliderWidget to a float without a range")
    elif isinstance(widget, QtWidgets.QDoubleSpinBox):
        widget.setRange(float("-inf"), float("inf"))
    else:
        widget.setRange(-(2**31), 2**31 - 1)


class GuiBinding:
    """What connectGui does: each bound widget shows its parameter, and a user's change to the widget sets it.
    The parameter node's ModifiedEvent puts later changes back into the widgets."""

    connected = 0  # bindings connected now, across the process: entering a module again must not pile them up

    def __init__(self, wrapper, ui: UiVariables):
        GuiBinding.connected += 1
        self.wrapper, self.pairs = wrapper, list(_parameter_widgets(ui))
        self.slots = []
        for parameter, widget in self.pairs:
            _connector_range(widget, wrapper.allFields[parameter], wrapper.allRanges.get(parameter))
            def changed(*_args, parameter=parameter, widget=widget):
                setattr(self.wrapper, parameter, _widget_value(widget))
            _change_signal(widget).connect(changed)
            self.slots.append((widget, changed))
        self.tag = wrapper.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *args: self.show())
        self.show()

    def show(self):
        for parameter, widget in self.pairs:
            _show_value(widget, getattr(self.wrapper, parameter))

    def disconnect(self):
        GuiBinding.connected -= 1
        for widget, slot in self.slots:
            try:
                _change_signal(widget).disconnect(slot)
            except RuntimeError:  # the panel's widgets were already deleted with it
                pass
        self.wrapper.parameterNode.RemoveObserver(self.tag)


def click(wrapped: PythonQt) -> None:
    """A user's click on a real button."""
    wrapped.qt.click()
    application().processEvents()
