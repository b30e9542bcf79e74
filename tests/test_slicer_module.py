"""The Slicer module's static contract: its .ui loads in real Qt with every widget the code uses, and
its CMake lists every file that ships. (The module itself needs the Slicer application to import.)"""

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "SyntheticContrast"
MODULE_PY = MODULE_DIR / "SyntheticContrast.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SyntheticContrast.ui"


@pytest.fixture(scope="module")
def ui_widget():
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    qt_widgets = pytest.importorskip("PySide6.QtWidgets")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader

    app = qt_widgets.QApplication.instance() or qt_widgets.QApplication([])
    handle = QFile(str(UI_FILE))
    assert handle.open(QFile.ReadOnly)
    widget = QUiLoader().load(handle)  # ctk/qMRML classes fall back to the base class named in the .ui
    handle.close()
    assert widget is not None
    yield widget
    widget.deleteLater()
    app.processEvents()


def test_every_ui_name_the_module_uses_exists(ui_widget):
    from PySide6.QtCore import QObject

    used = set(re.findall(r"\bui\.(\w+)", MODULE_PY.read_text()))  # self.ui.x and the local alias ui.x
    assert {"applyButton", "cancelButton", "progressBar", "computeCNRButton"} <= used  # the scan itself works
    present = {child.objectName() for child in ui_widget.findChildren(QObject)}
    missing = sorted(used - present)
    assert not missing, f"SyntheticContrast.py uses widgets the .ui lacks: {missing}"


def _parameter_fields():
    tree = ast.parse(MODULE_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SyntheticContrastParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_every_bound_widget_has_a_parameter():
    bound = {p.find("string").text for p in ET.parse(UI_FILE).iter("property") if p.get("name") == "SlicerParameterName"}
    fields = _parameter_fields()
    assert bound and bound <= fields, f"bound in .ui but not parameters: {sorted(bound - fields)}"
    for required in ("inputVolume", "referenceVolume", "device", "stride", "blend", "batchSize", "precision"):
        assert required in bound, required
    assert "model" in fields and "model" not in bound  # the model combo lists the store at run time: the widget wires it


def test_every_choice_combo_lists_exactly_the_parameters_choices():
    """A value the parameter accepts but the combo lacks cannot be chosen in Slicer (and the reverse is refused)."""
    tree = ast.parse(MODULE_PY.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SyntheticContrastParameterNode")
    choices = {}
    for field in (n for n in cls.body if isinstance(n, ast.AnnAssign)):
        calls = [c for c in ast.walk(field.annotation) if isinstance(c, ast.Call) and getattr(c.func, "id", "") == "Choice"]
        if calls:
            choices[field.target.id] = ast.literal_eval(calls[0].args[0])
    combos = {}
    for widget in ET.parse(UI_FILE).iter("widget"):
        bound = [p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        if widget.get("class") == "QComboBox" and bound:
            combos[bound[0]] = [i.find("property/string").text for i in widget.findall("item")]
    assert "precision" in choices and set(choices) <= set(combos)
    for name, values in choices.items():
        assert combos[name] == values, f"{name}: .ui lists {combos[name]}, the parameter accepts {values}"


def test_module_imports_no_engine_at_import_time():
    """Dependencies come on first use: the module's top level must not import torch or the engine."""
    tree = ast.parse(MODULE_PY.read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
    assert "torch" not in names and not any(str(n).startswith("SyntheticContrastLib") for n in names)


def _cmake_list(text: str, variable: str) -> set[str]:
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S).group(1)
    return {line.strip().replace("${MODULE_NAME}", "SyntheticContrast") for line in body.splitlines() if line.strip()}


def test_module_cmake_lists_every_shipped_file():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    shipped_py = {str(p.relative_to(MODULE_DIR)) for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    shipped_res = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    shipped_res |= {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "SyntheticContrastLib").rglob("bundled_models/*")}
    assert scripts == shipped_py
    assert resources == shipped_res
    assert "slicerMacroBuildScriptedModule" in text


def test_extension_cmake_declares_metadata_and_pytorch():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in text and "find_package(Slicer REQUIRED)" in text
    assert "slicer_add_python_unittest" in (ROOT / "Testing" / "CMakeLists.txt").read_text()


def test_the_extensions_index_entry_agrees_with_the_cmake_metadata():
    """SyntheticContrast.json is the entry to submit to Slicer's ExtensionsIndex: PyTorch must be a build dependency
    there too, or the index builds the extension without it; only the schema's own keys are allowed."""
    import json

    entry = json.loads((ROOT / "SyntheticContrast.json").read_text())
    cmake = (ROOT / "CMakeLists.txt").read_text()
    value = lambda key: re.search(rf'set\({key} "([^"]+)"\)', cmake).group(1)
    assert entry["build_dependencies"] == value("EXTENSION_DEPENDS").split() == ["PyTorch"]
    assert entry["category"] == value("EXTENSION_CATEGORY")
    assert entry["scm_url"].removesuffix(".git") == value("EXTENSION_HOMEPAGE")
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
                          "scm_url", "tier"} and entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/")


def test_icon_is_128_px():
    from PIL import Image

    with Image.open(MODULE_DIR / "Resources" / "Icons" / "SyntheticContrast.png") as icon:
        assert icon.size == (128, 128)


def test_every_engine_module_the_slicer_code_imports_is_shipped():
    """A module imported by the Slicer module or its collaborators but missing from CMake breaks only in Slicer."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    listed = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    sources = [MODULE_PY, *sorted((MODULE_DIR / "SyntheticContrastSlicer").glob("*.py"))]
    imported = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("SyntheticContrastLib", "SyntheticContrastSlicer"):
                module = node.module.replace(".", "/")
                if (MODULE_DIR / module).is_dir():  # from package import submodule (or a name of its __init__)
                    imported.add(f"{module}/__init__.py")
                    imported |= {f"{module}/{a.name}.py" for a in node.names if (MODULE_DIR / module / f"{a.name}.py").exists()}
                else:
                    imported.add(module + ".py")
            elif isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:  # relative, inside the Slicer package
                imported.add(f"SyntheticContrastSlicer/{node.module}.py")
    assert "SyntheticContrastSlicer/process.py" in imported and "SyntheticContrastLib/mrml.py" in imported
    assert imported <= listed, f"imported but not shipped: {sorted(imported - listed)}"
