"""Static checks of the Slicer extension: what a Slicer build or a module load would trip over.

No Slicer application runs here, so these tests read the CMake files, the
Qt Designer .ui files and the module sources the way Slicer's build and
``slicer.util.loadUI``/``parameterNodeWrapper`` use them, and fail on a
missing file, an unlisted library module, a widget the code looks up but the
.ui lacks, a parameter bound to a widget that cannot show it, a Qt import in
the library, or a requirement that would replace Slicer's numpy/SimpleITK.
"""

from __future__ import annotations

import ast
import json
import py_compile
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from T1ToT2Lib.core import dependencies
from T1ToT2Lib.core.errors import T1ToT2Error

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "T1ToT2Synthesis" / "T1ToT2Lib"
MODULES = ("T1ToT2Synthesis", "T1ToT2Training")
WIDGET_PREFIXES = ("Q", "ctk", "qMRML", "qSlicer")
EXTENSION_FIELDS = ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                    "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS")
#: Keys allowed by Slicer's slicer-extension-catalog-entry-schema v1.0.x (it has additionalProperties false).
CATALOG_KEYS = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
                "scm_type", "scm_url", "tier"}


# --- helpers -------------------------------------------------------------------------
def _strip_comment(line: str) -> str:
    in_string = False
    for index, char in enumerate(line):
        if char == '"' and (index == 0 or line[index - 1] != "\\"):
            in_string = not in_string
        elif char == "#" and not in_string:
            return line[:index]
    return line


def cmake_text(path: Path) -> str:
    """CMake source without comments (a '#' inside a quoted string is kept)."""
    return "\n".join(_strip_comment(line) for line in path.read_text().splitlines())


def cmake_set(path: Path, variable: str) -> list:
    """The items of ``set(variable ...)`` with ``${MODULE_NAME}`` expanded."""
    text = cmake_text(path)
    module_name = re.search(r"set\(\s*MODULE_NAME\s+(\S+?)\s*\)", text)
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"{path.relative_to(ROOT)} has no set({variable} ...)"
    items = match.group(1).split()
    if module_name:
        items = [item.replace("${MODULE_NAME}", module_name.group(1)) for item in items]
    return items


def cmake_variables(path: Path) -> dict:
    """Top-level ``set(NAME "value")`` assignments."""
    return {name: value for name, value in re.findall(r'set\(\s*(\w+)\s+"([^"]*)"\s*\)', cmake_text(path))}


def ui_tree(module: str) -> ET.Element:
    return ET.parse(ROOT / module / "Resources" / "UI" / f"{module}.ui").getroot()


def ui_widgets(module: str) -> dict:
    """{object name: widget class} of every widget in the module's .ui (the root included)."""
    return {w.get("name"): w.get("class") for w in ui_tree(module).iter("widget")}


def ui_parameter_bindings(module: str) -> dict:
    """{SlicerParameterName: widget element}."""
    bindings = {}
    for widget in ui_tree(module).iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                name = prop.find("string").text
                assert name not in bindings, f"{module}.ui binds parameter {name!r} to two widgets"
                bindings[name] = widget
    return bindings


def module_source(module: str) -> str:
    return (ROOT / module / f"{module}.py").read_text()


def parameter_fields(module: str) -> dict:
    """{field: annotation source} of the module's @parameterNodeWrapper class."""
    tree = ast.parse(module_source(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            return {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node.body if isinstance(stmt, ast.AnnAssign)}
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


def imported_modules(tree: ast.AST, top_level_only=False) -> set:
    nodes = tree.body if top_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def lib_files() -> list:
    return sorted(p for p in LIB.rglob("*.py") if "__pycache__" not in p.parts)


#: Subpackages that are not installed into Slicer: the browser front end (``t1tot2 serve``) runs on trame-slicer,
#: whose slicer-core pin cannot live in Slicer's own Python.
NOT_IN_SLICER = ("web",)


def slicer_lib_files() -> list:
    return [p for p in lib_files() if p.relative_to(LIB).parts[0] not in NOT_IN_SLICER]


# --- CMake ----------------------------------------------------------------------------
def test_top_level_cmake_declares_the_extension_and_every_module():
    path = ROOT / "CMakeLists.txt"
    values = cmake_variables(path)
    for field in EXTENSION_FIELDS:
        assert values.get(field, "").strip(), f"CMakeLists.txt must set {field}"
    assert values["EXTENSION_CATEGORY"] == "Image Synthesis"  # the Extensions Index category for this kind of tool
    assert "developers" not in values["EXTENSION_CONTRIBUTORS"]
    assert "PyTorch" in values["EXTENSION_DEPENDS"].split()
    assert values["EXTENSION_ICONURL"].endswith("Resources/T1ToT2.png")
    text = cmake_text(path)
    for required in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                     "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert required in text, f"CMakeLists.txt lacks {required}"
    subdirectories = re.findall(r"add_subdirectory\(\s*(\S+?)\s*\)", text)
    assert subdirectories == list(MODULES)
    assert text.index("include(${Slicer_USE_FILE})") < text.index("add_subdirectory") < text.index("Slicer_EXTENSION_CPACK")


def test_icon_and_screenshot_urls_name_files_of_this_repository():
    values = cmake_variables(ROOT / "CMakeLists.txt")
    urls = [values["EXTENSION_ICONURL"]] + values["EXTENSION_SCREENSHOTURLS"].split()
    for url in urls:
        match = re.match(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/[^/]+/(.+)$", url)
        assert match, f"{url} is not a raw GitHub file URL"
        path = ROOT / match.group(1)
        # Screenshots are rendered by scripts/render_screenshots.py; once there, the names must match.
        if "Screenshots/" not in url or path.parent.is_dir():
            assert path.is_file(), f"{url} names {match.group(1)}, which is not in the repository"


@pytest.mark.parametrize("module", MODULES)
def test_every_file_a_module_lists_exists(module):
    cmake = ROOT / module / "CMakeLists.txt"
    listed = cmake_set(cmake, "MODULE_PYTHON_SCRIPTS") + cmake_set(cmake, "MODULE_PYTHON_RESOURCES")
    assert f"{module}.py" in listed and f"Resources/UI/{module}.ui" in listed and f"Resources/Icons/{module}.png" in listed
    missing = [item for item in listed if not (ROOT / module / item).is_file()]
    assert not missing, f"{module}/CMakeLists.txt lists files that do not exist: {missing}"
    assert len(listed) == len(set(listed)), f"{module}/CMakeLists.txt lists a file twice"
    text = cmake_text(cmake)
    call = re.search(r"slicerMacroBuildScriptedModule\((.*?)\)", text, re.S).group(1)
    assert "SCRIPTS ${MODULE_PYTHON_SCRIPTS}" in call and "RESOURCES ${MODULE_PYTHON_RESOURCES}" in call
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in testing.group(1)


def test_every_library_module_is_installed_with_the_synthesis_module():
    listed = set(cmake_set(ROOT / "T1ToT2Synthesis" / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS"))
    present = {p.relative_to(LIB.parent).as_posix() for p in slicer_lib_files()}
    unlisted = sorted(present - listed)
    assert not unlisted, f"add these to MODULE_PYTHON_SCRIPTS in T1ToT2Synthesis/CMakeLists.txt: {unlisted}"
    assert "T1ToT2Lib/requirements.txt" not in listed
    assert "Resources/requirements.txt" in cmake_set(ROOT / "T1ToT2Synthesis" / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES")


@pytest.mark.parametrize("module", MODULES)
def test_testing_folders_register_self_tests_that_exist(module, tmp_path):
    testing = ROOT / module / "Testing"
    assert "add_subdirectory(Python)" in cmake_text(testing / "CMakeLists.txt")
    scripts = re.findall(r"slicer_add_python_unittest\(\s*SCRIPT\s+(\S+?)\s*\)", cmake_text(testing / "Python" / "CMakeLists.txt"))
    assert scripts
    for script in scripts:
        path = testing / "Python" / script.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "")
        assert path.is_file(), f"{module} registers a missing self-test {path.name}"
        py_compile.compile(str(path), doraise=True, cfile=str(tmp_path / "selftest.pyc"))


def test_demo_model_install_rule_points_at_the_top_level_resources():
    text = cmake_text(ROOT / "T1ToT2Synthesis" / "CMakeLists.txt")
    # The model file and, when exported, its ONNX twin (synthesis without PyTorch) are installed side by side.
    assert re.search(r"foreach\(T1ToT2_DEMO_FILE demo_model\.safetensors demo_model\.onnx\)", text)
    assert "${CMAKE_CURRENT_SOURCE_DIR}/../Resources/${T1ToT2_DEMO_FILE}" in text
    assert "Resources/Models" in text  # where T1ToT2Lib.core.dependencies.find_bundled_model looks in an install


# --- .ui files and the code that uses them -------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_every_widget_the_code_looks_up_is_in_the_ui(module):
    widgets = ui_widgets(module)
    source = module_source(module)
    used = set(re.findall(r"self\.ui\.(\w+)", source)) | set(re.findall(r"findChild\([^,]+,\s*[\"'](\w+)[\"']\)", source))
    for self_test in (ROOT / module / "Testing" / "Python").glob("*.py"):
        used |= set(re.findall(r"widget\.ui\.(\w+)", self_test.read_text()))
    assert used, f"{module}.py uses no widgets"
    missing = sorted(used - set(widgets))
    assert not missing, f"{module}.py uses widgets missing from {module}.ui: {missing}"


@pytest.mark.parametrize("module", MODULES)
def test_ui_uses_only_qt_ctk_and_slicer_widgets_that_it_declares(module):
    tree = ui_tree(module)
    classes = {w.get("class") for w in tree.iter("widget")} | {layout.get("class") for layout in tree.iter("layout")}
    foreign = sorted(c for c in classes if not c.startswith(WIDGET_PREFIXES))
    assert not foreign, f"{module}.ui uses widget classes Slicer does not provide: {foreign}"
    declared = {c.findtext("class") for c in tree.iter("customwidget")}
    custom = {c for c in classes if not c.startswith("Q")}
    assert custom <= declared, f"{module}.ui does not declare custom widgets {sorted(custom - declared)}"
    root = tree.find("widget")
    assert root.get("class") == "qMRMLWidget" and root.get("name") == module
    names = [w.get("name") for w in tree.iter("widget")]
    assert len(names) == len(set(names)), f"{module}.ui has duplicate widget names"


@pytest.mark.parametrize("module", MODULES)
def test_every_mrml_widget_gets_the_scene(module):
    """A node selector that is not connected to the scene lists nothing."""
    tree = ui_tree(module)
    connected = {c.findtext("receiver") for c in tree.iter("connection")
                 if c.findtext("sender") == module and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml = {w.get("name") for w in tree.iter("widget") if w.get("class").startswith("qMRML") and w.get("name") != module}
    assert mrml and mrml <= connected, f"{module}.ui: connect mrmlSceneChanged to {sorted(mrml - connected)}"


def _widget_property(widget, name):
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _expected_widget_classes(annotation: str) -> tuple:
    """Widget classes Slicer's parameterNodeWrapper gui connectors accept for a parameter type.

    The connectors match the widget's exact type (``type(widget) == qt.QDoubleSpinBox``),
    so e.g. a float in a ctkDoubleSpinBox is refused when the module opens.
    """
    if "vtkMRML" in annotation:
        return ("qMRMLNodeComboBox", "qMRMLSubjectHierarchyTreeView")
    if "Choice" in annotation:
        return ("QComboBox",)
    if annotation == "bool":
        return ("QCheckBox", "QPushButton")
    if annotation.startswith("pathlib.Path"):
        return ("ctkPathLineEdit", "ctkDirectoryButton")
    if re.match(r"(Annotated\[)?float\b", annotation):
        return ("QDoubleSpinBox", "ctkSliderWidget")
    if re.match(r"(Annotated\[)?int\b", annotation):
        return ("QSpinBox", "QSlider")
    if re.match(r"(Annotated\[)?str\b", annotation):
        return ("QLineEdit", "QTextEdit")
    raise AssertionError(f"no Slicer gui connector for a parameter of type {annotation}")


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_in_the_ui_match_the_parameter_node_and_fit_their_widgets(module):
    fields = parameter_fields(module)
    bindings = ui_parameter_bindings(module)
    unknown = sorted(set(bindings) - set(fields))
    assert not unknown, f"{module}.ui binds parameters the parameter node lacks: {unknown}"
    # A list of nodes has no gui connector in Slicer: the panel edits it (e.g. Add pair / Remove pair).
    unbound = sorted(set(f for f, annotation in fields.items() if not annotation.startswith("list[")) - set(bindings))
    assert not unbound, f"{module}.py parameters with no widget in {module}.ui: {unbound}"
    for name, widget in bindings.items():
        annotation = fields[name]
        assert widget.get("class") in _expected_widget_classes(annotation), (
            f"{module}.ui shows parameter {name} ({annotation}) in a {widget.get('class')}")
        if widget.get("class") == "qMRMLNodeComboBox":
            node_class = annotation.rsplit(".", 1)[-1]
            types = [s.text for s in _widget_property(widget, "nodeTypes").iter("string")]
            assert types == [node_class], f"{module}.ui: {widget.get('name')} lists {types}, the parameter holds {node_class}"


@pytest.mark.parametrize("module", MODULES)
def test_choice_parameters_default_to_one_of_their_choices(module):
    tree = ast.parse(module_source(module))
    constants = {t.id: ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name) and isinstance(n.value, (ast.List, ast.Tuple))}
    checked = 0
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")):
        for stmt in cls.body:
            if isinstance(stmt, ast.AnnAssign) and "Choice(" in ast.unparse(stmt.annotation) and stmt.value is not None:
                choice = re.search(r"Choice\((\w+)\)", ast.unparse(stmt.annotation)).group(1)
                if choice == "DEVICE_CHOICES":  # depends on the platform: the default must be offered on every one
                    offered = [dependencies.offered_devices(system, machine, nvidia, release) for system, machine in
                               (("Linux", "x86_64"), ("Windows", "AMD64"), ("Darwin", "arm64"), ("Darwin", "x86_64"))
                               for nvidia in (False, True) for release in ("11.0", "14.2")]
                    assert all(ast.literal_eval(stmt.value) in devices for devices in offered)
                    checked += 1
                    continue
                assert ast.literal_eval(stmt.value) in constants[choice], f"{module}: {stmt.target.id} default not in {choice}"
                checked += 1
    assert checked >= 2


# --- Python sources ----------------------------------------------------------------------
@pytest.mark.parametrize("module", MODULES)
def test_module_files_compile_and_follow_the_template(module, tmp_path):
    path = ROOT / module / f"{module}.py"
    py_compile.compile(str(path), cfile=str(tmp_path / "m.pyc"), doraise=True)
    tree = ast.parse(path.read_text())
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes[module] == ["ScriptedLoadableModule"]
    assert classes[f"{module}Widget"][0] == "ScriptedLoadableModuleWidget"
    assert classes[f"{module}Logic"] == ["ScriptedLoadableModuleLogic"]
    assert classes[f"{module}Test"] == ["ScriptedLoadableModuleTest"]
    source = path.read_text()
    assert "tryWithErrorDisplay" in source and "from slicer.i18n import tr as _" in source
    assert "Grant-Jacob" in source and "not for diagnosis" in source


@pytest.mark.parametrize("module", MODULES)
def test_module_files_import_no_torch_or_library_at_load(module):
    """Torch may be missing when Slicer loads the module; the library is imported on first use only."""
    tree = ast.parse(module_source(module))
    top = imported_modules(tree, top_level_only=True)
    assert not {m for m in top if m.split(".")[0] in ("torch", "T1ToT2Lib", "safetensors", "skimage")}, top
    assert "torch" not in imported_modules(tree)


def test_library_never_imports_qt_ctk_or_scripted_module_machinery():
    forbidden = ("qt", "ctk", "slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n", "PythonQt")
    for path in lib_files():
        names = imported_modules(ast.parse(path.read_text()))
        bad = sorted(n for n in names if n in forbidden or n.split(".")[0] in ("qt", "ctk", "PythonQt")
                     or n.startswith("slicer.ScriptedLoadableModule"))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}: keep Qt in the module files"
        if path.parent.name not in ("slicer", "web"):
            assert not any(n == "slicer" or n.startswith("slicer.") for n in names), (
                f"{path.relative_to(ROOT)} imports slicer: only T1ToT2Lib/slicer/ (and the web front end over it) touches MRML")


def test_importing_what_the_modules_need_before_torch_does_not_import_torch():
    code = ("import sys, T1ToT2Lib, T1ToT2Lib.core.dependencies, T1ToT2Lib.slicer.jobs, T1ToT2Lib.core.errors;"
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_library_third_party_imports_are_installed_by_requirements_or_shipped_by_slicer():
    # PyTorchUtils: the PyTorch extension's module, imported only inside ``except ImportError`` (optional).
    provided_by_slicer = {"numpy", "SimpleITK", "vtk", "vtkmodules", "slicer", "packaging", "PyTorchUtils"}
    import_to_project = {"skimage": "scikit-image", "PIL": "pillow", "sklearn": "scikit-learn"}
    required = {dependencies.requirement_name(r) for r in
                dependencies.read_requirements(ROOT / "T1ToT2Synthesis" / "Resources" / "requirements.txt")}
    unmet = set()
    for path in slicer_lib_files():
        for name in imported_modules(ast.parse(path.read_text())):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in provided_by_slicer or top == "T1ToT2Lib" or top == "torch":
                continue
            if dependencies.normalize_name(import_to_project.get(top, top)) not in required:
                unmet.add(f"{top} ({path.name})")
    assert not unmet, f"add to Resources/requirements.txt: {sorted(unmet)}"
    imported = {dependencies.normalize_name(import_to_project.get(n.split(".")[0], n.split(".")[0]))
                for path in slicer_lib_files() for n in imported_modules(ast.parse(path.read_text()))}
    unused = sorted(required - imported)
    assert not unused, f"requirements.txt installs packages the library never imports: {unused}"


# --- requirements, catalog entry, icons -------------------------------------------------------
def test_requirements_never_replace_slicer_packages():
    lines = dependencies.read_requirements(ROOT / "T1ToT2Synthesis" / "Resources" / "requirements.txt")
    names = {dependencies.requirement_name(line) for line in lines}
    assert not names & {"numpy", "simpleitk", "vtk", "torch"}
    assert {"safetensors", "scikit-image", "tqdm"} <= names


def test_catalog_entry_parses_and_agrees_with_the_cmake_metadata():
    entry = json.loads((ROOT / "T1ToT2.json").read_text())
    assert set(entry) <= CATALOG_KEYS, f"unknown catalog keys {sorted(set(entry) - CATALOG_KEYS)}"
    assert re.match(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                    r"slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#$", entry["$schema"])
    values = cmake_variables(ROOT / "CMakeLists.txt")
    assert entry["category"] == values["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == values["EXTENSION_DEPENDS"].split()
    assert entry["scm_url"].startswith("https://") and entry["build_subdirectory"] == "."
    assert entry.get("tier", 1) in (1, 3, 5)


@pytest.mark.parametrize("path", ["Resources/T1ToT2.png", "T1ToT2Synthesis/Resources/Icons/T1ToT2Synthesis.png",
                                  "T1ToT2Training/Resources/Icons/T1ToT2Training.png"])
def test_icons_are_128_pixel_pngs(path):
    header = (ROOT / path).read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", header[16:24]) == (128, 128)


# --- dependencies.py --------------------------------------------------------------------------
def test_torch_index_follows_platform_and_driver():
    assert dependencies.torch_index_url("Darwin", (12, 4)) is None
    assert dependencies.torch_index_url("Linux", None).endswith("/cpu")
    assert dependencies.torch_index_url("Windows", (12, 5)).endswith("/cu124")
    assert dependencies.torch_index_url("Linux", (13, 0)).endswith("/cu128")
    assert dependencies.torch_index_url("Linux", (11, 4)).endswith("/cpu")  # driver too old for any build
    args = dependencies.torch_pip_arguments("Linux", (12, 1))
    assert args.startswith('"torch>=') and args.endswith("--index-url https://download.pytorch.org/whl/cu121")
    assert "--index-url" not in dependencies.torch_pip_arguments("Darwin")


def test_cuda_driver_version_is_read_from_nvidia_smi_output():
    banner = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |"
    assert dependencies.parse_cuda_driver_version(banner) == (12, 4)
    assert dependencies.parse_cuda_driver_version("command not found") is None
    assert dependencies.parse_cuda_driver_version("") is None


def test_requirement_names_and_protected_packages(tmp_path):
    assert dependencies.requirement_name("scikit_image>=0.21") == "scikit-image"
    assert dependencies.requirement_name("SimpleITK") == "simpleitk"
    with pytest.raises(T1ToT2Error, match="name>=version"):
        dependencies.requirement_name(">=1.0")
    bad = tmp_path / "requirements.txt"
    bad.write_text("# comment\nsafetensors>=0.4\nNumPy<2  # no\n\n")
    with pytest.raises(T1ToT2Error, match=r"NumPy<2 would replace packages Slicer ships: remove them"):
        dependencies.read_requirements(bad)
    bad.write_text("safetensors>=0.4  # weights\n\ntqdm\n")
    assert dependencies.read_requirements(bad) == ["safetensors>=0.4", "tqdm"]
    with pytest.raises(T1ToT2Error, match="missing: reinstall"):
        dependencies.read_requirements(tmp_path / "absent.txt")


def test_missing_requirements_checks_presence_and_version_range():
    import importlib.metadata

    installed = {"safetensors": "0.3.1", "tqdm": "4.66.0", "numpy": "1.26.4", "simpleitk": "2.3.1"}

    def lookup(name):
        if name.lower() in installed:
            return installed[name.lower()]
        raise importlib.metadata.PackageNotFoundError(name)

    wanted = ["safetensors>=0.4", "tqdm>=4.60", "scikit-image>=0.21"]
    assert dependencies.missing_requirements(wanted, lookup) == ["safetensors>=0.4", "scikit-image>=0.21"]
    assert dependencies.protected_constraints(lookup) == ["numpy==1.26.4", "simpleitk==2.3.1"]
    installed["pydicom"] = "2.4.3"  # Slicer's own: a dependency must not pull pydicom 3 over it
    assert "pydicom==2.4.3" in dependencies.protected_constraints(lookup)
    assert "pydicom==2.4.3" not in dependencies.protected_constraints(lookup, installing=["pydicom>=3"])
    args = dependencies.requirements_pip_arguments(["tqdm>=4.60", "scikit-image>=0.21"], "/tmp/c.txt")
    assert args == '"tqdm>=4.60" "scikit-image>=0.21" -c "/tmp/c.txt"'


def test_real_environment_satisfies_the_requirements_and_has_torch():
    lines = dependencies.read_requirements(ROOT / "T1ToT2Synthesis" / "Resources" / "requirements.txt")
    assert dependencies.missing_requirements(lines) == []
    assert dependencies.torch_installed()


def test_bundled_model_is_found_installed_or_in_a_source_checkout(tmp_path):
    module_dir = tmp_path / "T1ToT2Synthesis"
    module_dir.mkdir()
    assert dependencies.find_bundled_model(module_dir) is None
    source_copy = tmp_path / "Resources" / "demo_model.safetensors"
    source_copy.parent.mkdir()
    source_copy.write_bytes(b"x")
    assert dependencies.find_bundled_model(module_dir) == source_copy
    installed = module_dir / "Resources" / "Models" / "demo_model.safetensors"
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b"x")
    assert dependencies.find_bundled_model(module_dir) == installed


# --- the paper's citation ---------------------------------------------------------------------
WRONG_CITATION_FRAGMENTS = ("Introducing a new method for MRI", "R. M. Grant-Jacob",
                            "synthesis of T2 SPACE images from T1 VIBE images")


def _plain(text: str) -> str:
    """Text with Markdown emphasis, HTML entities, escaped quotes, string-literal seams and line breaks removed."""
    import html

    text = html.unescape(text).replace("\\\"", "\"").replace("*", "")
    text = re.sub(r"\"\s*\n\s*\"", "", text)  # adjacent Python string literals
    return re.sub(r"\s+", " ", text)


def test_the_paper_is_cited_with_its_real_authors_and_title_everywhere(tmp_path):
    import numpy as np

    from T1ToT2Lib.core import about, metrics
    from T1ToT2Lib.research import report
    from T1ToT2Lib.core.volume import Volume

    assert about.CITATION.startswith("J. A. Grant-Jacob, C. Everitt, R. W. Eason, L. J. King and B. Mills, ")
    title = ("Exploring sequence transformation in magnetic resonance imaging via deep learning using data from a "
             "single asymptomatic patient")
    assert title in about.CITATION and about.CITATION.endswith("J. Phys. Commun. 5, 095015 (2021)")
    authors = "J. A. Grant-Jacob, C. Everitt, R. W. Eason, L. J. King and B. Mills"
    readme = _plain((ROOT / "README.md").read_text())
    assert f"{authors}, {title}, J. Phys. Commun. 5, 095015 (2021)" in readme
    for module in MODULES:
        assert _plain(about.CITATION) in _plain(module_source(module)), module
    # The report footer, as written.
    rng = np.random.default_rng(0)
    actual = Volume.from_geometry(rng.random((8, 16, 16)).astype(np.float32) + 1, spacing=(1.0, 1.0, 1.0))
    index = report.write_report(tmp_path, {"m": metrics.evaluate_volumes(actual, actual)})
    assert about.CITATION in _plain(index.read_text())
    # The invented title and initials appear in no tracked file.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        path = ROOT / name
        if path.suffix in (".py", ".md", ".txt", ".json", ".html", ".ui", ".cmake") or path.name == "CMakeLists.txt":
            text = path.read_text(errors="replace") if path.is_file() else ""
            for fragment in WRONG_CITATION_FRAGMENTS:
                assert fragment not in text or path == Path(__file__), (name, fragment)


# --- Extensions Index readiness -------------------------------------------------------------------
def test_license_is_the_apache_2_text_pyproject_declares():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 190
    assert re.search(r'^license = "Apache-2.0"$', (ROOT / "pyproject.toml").read_text(), re.M)


def test_every_copy_of_the_repository_url_is_the_one_constant():
    from T1ToT2Lib.core import about

    values = cmake_variables(ROOT / "CMakeLists.txt")
    assert values["T1TOT2_REPOSITORY_URL"] == about.REPOSITORY_URL
    assert values["EXTENSION_HOMEPAGE"] == about.DOCUMENTATION_URL
    owner_repo = about.REPOSITORY_URL.removeprefix("https://github.com/")
    for url in [values["EXTENSION_ICONURL"], *values["EXTENSION_SCREENSHOTURLS"].split()]:
        assert url.startswith(f"https://raw.githubusercontent.com/{owner_repo}/"), url
    assert json.loads((ROOT / "T1ToT2.json").read_text())["scm_url"] == about.REPOSITORY_URL + ".git"
    for module in MODULES:
        source = module_source(module)
        assert f'DOCUMENTATION_URL = "{about.DOCUMENTATION_URL}"' in source, module
        assert "helpText" in source and ".format(url=DOCUMENTATION_URL)" in source, module
        assert 'translate("qSlicerAbstractCoreModule", "Image Synthesis")' in source, module
        assert "T1ToT2 developers" not in source


def test_output_model_browse_opens_a_save_dialog():
    """ctkPathLineEdit with the Writable filter: Browse accepts a file that does not exist yet."""
    source = module_source("T1ToT2Training")
    assert re.search(r"outputModelPathLineEdit\.filters = .*\.Files \| .*\.Writable", source)


# --- docs/ ---------------------------------------------------------------------------------------
def test_docs_tissue_table_matches_the_phantom():
    from T1ToT2Lib.phantom import render as phantom

    vibe, space = phantom.tissue_signals()
    rows = {}
    for line in (ROOT / "docs" / "phantom.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0].isdigit():
            rows[int(cells[0])] = cells
    names = {v: k for k, v in phantom.TISSUES.items() if v}
    assert sorted(rows) == sorted(names)
    for label, cells in rows.items():
        props = phantom.TISSUE_PROPERTIES[names[label]]
        assert cells[1].replace(" ", "_").replace("fatty_marrow", "marrow") == names[label]
        assert [float(c) for c in cells[2:6]] == [props["T1"], props["T2star"], props["T2_space"], props["PD"]], cells
        assert (cells[6] == "yes") == props["fat"] and (cells[7] == "yes") == props["flow"]
        assert abs(float(cells[8]) - vibe[label]) <= 0.5 and abs(float(cells[9]) - space[label]) <= 0.5, cells


def test_docs_pages_are_linked_from_the_readme_and_their_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for page in ("phantom.md", "metrics.md", "performance.md", "architecture.md"):
        assert f"](docs/{page})" in readme, page
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text()):
            assert (page.parent / target).is_file(), (page.name, target)
        assert "DESIGN.md" not in page.read_text()
