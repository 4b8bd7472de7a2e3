"""Which Python packages the Slicer modules still need, and how to install them safely.

Pure helpers without Qt or Slicer: the modules call them, then do the
installing with ``PyTorchUtils`` or ``slicer.util.pip_install``.  Nothing
here imports torch; presence is checked through package metadata so that a
missing or broken install is found without loading it.

Slicer ships its own numpy, SimpleITK and VTK, built against the
application; a ``pip install`` that replaced them would break Slicer.  The
requirements file therefore must not name them, and every install is run with
constraints that pin them to the versions already present.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path

from .errors import T1ToT2Error

#: The torch version range the library is written for.
TORCH_REQUIREMENT = "torch>=2.1"
#: Packages Slicer builds itself; requirements.txt must not name them.
PROTECTED_PACKAGES = ("numpy", "simpleitk", "vtk")
#: Installed versions pinned during every install, so a dependency cannot upgrade them
#: (Slicer's DICOM module is written against the pydicom it ships).
PINNED_PACKAGES = (*PROTECTED_PACKAGES, "pydicom", "pillow")
#: CUDA builds published on download.pytorch.org, as (major, minor) -> index tag.
TORCH_CUDA_BUILDS = {(11, 8): "cu118", (12, 1): "cu121", (12, 4): "cu124", (12, 6): "cu126", (12, 8): "cu128"}
TORCH_INDEX_BASE = "https://download.pytorch.org/whl/"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalize_name(name: str) -> str:
    """PEP 503 normalised project name (``scikit_image`` -> ``scikit-image``), lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """The project name of a requirement line such as ``scikit-image>=0.21``."""
    match = _NAME.match(requirement)
    if not match:
        raise T1ToT2Error(f"cannot read the requirement {requirement!r}: write it as 'name>=version'")
    return normalize_name(match.group(1))


def read_requirements(path) -> list:
    """The requirement lines of a requirements file, comments and blank lines dropped.

    Raises :class:`T1ToT2Error` if the file names a package Slicer provides itself.
    """
    path = Path(path)
    if not path.is_file():
        raise T1ToT2Error(f"requirements file '{path}' is missing: reinstall the T1ToT2 extension")
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    check_not_protected(lines)
    return lines


def check_not_protected(requirements) -> None:
    protected = [r for r in requirements if requirement_name(r) in PROTECTED_PACKAGES]
    if protected:
        raise T1ToT2Error(
            f"requirements {', '.join(protected)} would replace packages Slicer ships: remove them from requirements.txt"
        )


def installed_version(name: str, version_lookup=importlib.metadata.version):
    """Installed version of project ``name``, or None when it is not installed."""
    try:
        return version_lookup(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_satisfied(requirement: str, version_lookup=importlib.metadata.version) -> bool:
    """Whether ``requirement`` is installed in a version its specifier accepts."""
    version = installed_version(requirement_name(requirement), version_lookup)
    if version is None:
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # without packaging, presence is the best check available
        return True
    return Requirement(requirement).specifier.contains(version, prereleases=True)


def missing_requirements(requirements, version_lookup=importlib.metadata.version) -> list:
    """The requirements that are not installed, or installed in a version outside their range."""
    return [r for r in requirements if not is_satisfied(r, version_lookup)]


def protected_constraints(version_lookup=importlib.metadata.version, installing=()) -> list:
    """``name==version`` lines pinning the Slicer-provided packages that are installed.

    Passed to pip as a constraints file so that installing, e.g., scikit-image
    cannot upgrade Slicer's numpy.  A pinned package that is itself among the
    requirements being installed (``installing``, too old for them) is left free.
    """
    upgrading = {requirement_name(r) for r in installing}
    pins = []
    for name in PINNED_PACKAGES:
        if name in upgrading:
            continue
        version = installed_version(name, version_lookup)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins


def torch_installed() -> bool:
    """Whether torch can be imported, checked without importing it."""
    return importlib.util.find_spec("torch") is not None


def parse_cuda_driver_version(nvidia_smi_output: str):
    """(major, minor) of the "CUDA Version: 12.4" that ``nvidia-smi`` prints, or None."""
    match = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", nvidia_smi_output or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def torch_index_url(system: str, cuda_driver_version=None):
    """The pip index for a torch build that runs here, or None for PyPI's default build.

    macOS: PyPI (its wheels carry MPS).  Linux and Windows with an NVIDIA
    driver: the newest CUDA build the driver supports.  Otherwise the CPU build,
    which avoids downloading several GB of CUDA libraries that cannot be used.
    """
    if system == "Darwin":
        return None
    if cuda_driver_version is not None:
        usable = [v for v in TORCH_CUDA_BUILDS if v <= tuple(cuda_driver_version)]
        if usable:
            return TORCH_INDEX_BASE + TORCH_CUDA_BUILDS[max(usable)]
    return TORCH_INDEX_BASE + "cpu"


def torch_pip_arguments(system: str, cuda_driver_version=None) -> str:
    """The argument string for ``slicer.util.pip_install`` that installs a suitable torch."""
    url = torch_index_url(system, cuda_driver_version)
    requirement = f'"{TORCH_REQUIREMENT}"'
    return requirement if url is None else f"{requirement} --index-url {url}"


def requirements_pip_arguments(requirements, constraints_file) -> str:
    """The argument string installing ``requirements`` under the protected-package constraints."""
    quoted = " ".join(f'"{r}"' for r in requirements)
    return f'{quoted} -c "{constraints_file}"'


def find_bundled_model(module_dir, file_name: str = "demo_model.safetensors"):
    """The demo model installed with the Synthesis module, or None.

    Installed extensions have it under ``<module>/Resources/Models``; in a
    source checkout it is in the repository's top-level ``Resources``.
    """
    module_dir = Path(module_dir)
    for candidate in (module_dir / "Resources" / "Models" / file_name, module_dir.parent / "Resources" / file_name):
        if candidate.is_file():
            return candidate
    return None


#: The Synthesis module's requirements file (``Resources/`` beside ``T1ToT2Lib/``, in a checkout and in Slicer).
REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"


def cuda_driver_version():
    """The NVIDIA driver's CUDA version from ``nvidia-smi``, or None without one."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        output = subprocess.run([smi], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_cuda_driver_version(output)


def ensure_in_slicer(util, ask_confirmation=True, missing=None, cuda_version=None, system=None, need_torch=True,
                     status=None) -> bool:
    """Make torch and the requirements importable in Slicer's Python; False if the user declined.

    ``util`` is ``slicer.util`` (``confirmOkCancelDisplay``, ``pip_install``).
    Torch comes from the PyTorch extension's ``PyTorchUtils`` when present,
    else from pip with the index that fits this platform and driver; the other
    requirements are installed with Slicer's own packages pinned.  ``missing``
    (a callable returning the missing requirement lines) and ``cuda_version``
    (a callable) default to this module's checks.  ``need_torch=False`` (synthesis
    with an exported ONNX model) installs only the small packages, ONNX Runtime
    among them, and never PyTorch.  ``status(text)`` is told before each install starts: pip runs in
    Slicer's process and keeps it busy for minutes, so the panel says so first.
    """
    import platform
    import tempfile

    if missing is None:
        def missing():
            return missing_requirements(read_requirements(REQUIREMENTS_FILE))
    cuda_version = cuda_version or cuda_driver_version
    if need_torch and not torch_installed():
        try:
            import PyTorchUtils
        except ImportError:
            PyTorchUtils = None
        if PyTorchUtils is not None:
            _say(status, "Installing PyTorch through the PyTorch extension (Slicer is busy until it is done)...")
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=ask_confirmation, torchVersionRequirement=TORCH_REQUIREMENT[len("torch"):])
            if torch is None:
                return False
        else:
            if ask_confirmation and not util.confirmOkCancelDisplay(
                    "T1 to T2 needs PyTorch, which is not installed. Install it now? This can take several minutes."):
                return False
            _say(status, "Installing PyTorch (several minutes; Slicer is busy until it is done)...")
            util.pip_install(torch_pip_arguments(system or platform.system(), cuda_version()))
    needed = missing()
    if needed:
        if ask_confirmation and not util.confirmOkCancelDisplay(
                f"T1 to T2 needs these Python packages: {', '.join(needed)}. Install them now?"):
            return False
        constraints = Path(tempfile.mkdtemp(prefix="T1ToT2-")) / "constraints.txt"
        constraints.write_text("\n".join(protected_constraints(installing=needed)) + "\n")
        _say(status, f"Installing {', '.join(needed)} (Slicer is busy until it is done)...")
        util.pip_install(requirements_pip_arguments(needed, constraints))
    return True


def _say(status, text) -> None:
    if status is not None:
        status(text)


def nvidia_driver_present(system: str, which=None, exists=None) -> bool:
    """Whether an NVIDIA driver is installed (what CUDA needs), without importing torch or running anything:
    ``nvidia-smi`` on the PATH, the Linux driver's ``/proc/driver/nvidia/version``, or Windows' ``nvcuda.dll``."""
    import os
    import shutil

    which, exists = which or shutil.which, exists or os.path.exists
    if which("nvidia-smi"):
        return True
    if system == "Linux":
        return exists("/proc/driver/nvidia/version")
    if system == "Windows":
        return exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvcuda.dll"))
    return False


def offered_devices(system: str, machine: str, nvidia_driver: bool, mac_release: str = "") -> list:
    """The device choices worth offering on this hardware: CUDA only with an NVIDIA driver (Linux, Windows),
    MPS only on Apple silicon with macOS 12.3 or newer, then the CPU."""
    devices = ["auto"]
    if nvidia_driver and system in ("Linux", "Windows"):
        devices.append("cuda")
    if system == "Darwin" and machine.lower() in ("arm64", "aarch64"):
        version = tuple(int(p) for p in re.findall(r"\d+", mac_release or "0")[:2])
        if version >= (12, 3):
            devices.append("mps")
    return devices + ["cpu"]


def this_machines_devices() -> list:
    """:func:`offered_devices` for the computer this runs on."""
    import platform

    system = platform.system()
    return offered_devices(system, platform.machine(), nvidia_driver_present(system), platform.mac_ver()[0])


def missing_dependencies() -> list:
    """What is not installed yet (torch and the requirements), without installing anything; [] when ready.

    The modules' self-tests skip with this list instead of installing PyTorch during ctest.
    """
    missing = [] if torch_installed() else [TORCH_REQUIREMENT]
    try:
        return missing + missing_requirements(read_requirements(REQUIREMENTS_FILE))
    except T1ToT2Error as exc:
        return missing + [str(exc)]
