"""Just enough of Slicer's Python GUI layer to import the two module files outside Slicer.

slicer-core gives a real MRML scene but no ``qt``, ``slicer.ScriptedLoadableModule``,
``slicer.parameterNodeWrapper``, ``slicer.i18n`` or ``slicer.app``.  The
module files import those at load time; the *Logic* classes barely use them.
This shim supplies minimal stand-ins so the tests can load the module files
unchanged and drive their Logic (and their in-Slicer self-test classes) on a
headless scene.  The stand-ins do no GUI work: widgets are never created here.
"""

from __future__ import annotations

import sys
import types
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIRS = (ROOT / "T1ToT2Synthesis", ROOT / "T1ToT2Training")

#: One parameter store per module logic class, as a Slicer scene holds one parameter node per module.
PARAMETER_STORES: dict = {}


class _Settings:
    def __init__(self):
        self.values = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value):
        self.values[key] = value


class _App:
    """``slicer.app`` without a GUI: settings work, there is no layout manager."""

    def __init__(self, scene_folder):
        self._settings = _Settings()
        self.defaultScenePath = str(scene_folder)
        self.connections = []

    def settings(self):
        return self._settings

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def testingEnabled(self):
        return True  # tryWithErrorDisplay re-raises instead of opening a message box

    def layoutManager(self):
        return None

    def connect(self, signal, slot):
        """Qt signal connections are recorded (e.g. startupCompleted -> the Sample Data registration)."""
        self.connections.append((signal, slot))


def parameterNodeWrapper(cls):
    """Typed attribute access over a per-module dict, with the dataclass defaults."""
    annotations = dict(cls.__dict__.get("__annotations__", {}))
    defaults = {name: cls.__dict__.get(name) for name in annotations}

    class Wrapper:
        __annotations__ = annotations

        def __init__(self, store):
            object.__setattr__(self, "_store", store)
            for name, value in defaults.items():
                store.setdefault(name, value)

        def __getattr__(self, name):
            store = object.__getattribute__(self, "_store")
            if name in store:
                return store[name]
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name not in annotations:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            self._store[name] = value

        # The widget binds the GUI and observes changes; without Qt both are no-ops.
        def connectGui(self, ui):
            return object()

        def disconnectGui(self, tag):
            pass

        def AddObserver(self, event, callback, priority=0.0):
            return 1

        def RemoveObserver(self, tag):
            pass

    Wrapper.__name__ = Wrapper.__qualname__ = cls.__name__
    return Wrapper


class ScriptedLoadableModule:
    def __init__(self, parent):
        self.parent = parent


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class ScriptedLoadableModuleLogic:
    def getParameterNode(self):
        return PARAMETER_STORES.setdefault(type(self).__name__, {})


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        pass


def install(scene_folder) -> None:
    """Register the stand-ins in ``sys.modules`` and put the module folders on ``sys.path``."""
    import slicer

    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    sys.modules.setdefault("qt", qt)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for obj in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(slm, obj.__name__, obj)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.Choice = lambda choices: ("Choice", tuple(choices))
    pnw.WithinRange = lambda low, high: ("WithinRange", low, high)
    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    for name, module in (("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw), ("slicer.i18n", i18n)):
        sys.modules[name] = module
        setattr(slicer, name.split(".")[1], module)
    slicer.app = _App(scene_folder)
    for folder in MODULE_DIRS:
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    PARAMETER_STORES.clear()


class FakeWidget:
    """Stands in for any Qt widget a panel touches: state in attributes, show/hide/setValue recorded."""

    def __init__(self, name):
        self.objectName = name
        self.enabled = True
        self.visible = True
        self.text = ""
        self.toolTip = ""
        self.value = 0
        self.tableNode = None
        self.items = []  # a list widget's rows

    def hide(self):
        self.visible = False

    def show(self):
        self.visible = True

    def setValue(self, value):
        self.value = value

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def clear(self):
        self.items = []

    def addItem(self, text):
        self.items.append(text)


class FakeTimer:
    def __init__(self):
        self.active = False

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


def fake_ui(ui_path) -> types.SimpleNamespace:
    """One FakeWidget per widget the .ui file names, as ``slicer.util.childWidgetVariables`` gives."""
    import xml.etree.ElementTree as ET

    names = [w.get("name") for w in ET.parse(ui_path).getroot().iter("widget")]
    return types.SimpleNamespace(**{name: FakeWidget(name) for name in names})


def uninstall() -> None:
    import slicer

    for name in ("slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n", "T1ToT2Synthesis", "T1ToT2Training"):
        sys.modules.pop(name, None)
    if isinstance(sys.modules.get("qt"), types.ModuleType) and not hasattr(sys.modules["qt"], "QWidget"):
        sys.modules.pop("qt", None)
    for attr in ("ScriptedLoadableModule", "parameterNodeWrapper", "i18n", "app"):
        if hasattr(slicer, attr):
            delattr(slicer, attr)
    for folder in MODULE_DIRS:
        while str(folder) in sys.path:
            sys.path.remove(str(folder))
