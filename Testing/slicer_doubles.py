"""Test doubles for the parts of Slicer that slicer-core lacks, each enforcing the real contract.

A double that accepts any call hides the bugs users meet; these raise where Slicer raises.  Each follows
Slicer's own source (read, not copied) at tags v5.8.0 (d20ee94c) and v5.10.0 (a2b6d082) of Slicer/Slicer,
or SlicerPyTorch at e1c85cc; the file and lines are cited in each docstring.
"""

from __future__ import annotations

import io
import sys
import types
import unittest


# --- SampleData --------------------------------------------------------------------------------------
class SampleDataSource:
    """``Modules/Scripted/SampleData/SampleData.py:146-215`` (same lines at 5.8.0 and 5.10.0).

    Keyword order as in Slicer.  Only list/tuple ``uris`` are normalised (``:176-184``: per-file lists default
    to ``[None] * len(uris)``, ``fileNames`` does not); a string ``uris`` wraps every per-file field in a list
    (``:185-191``); then ``len(uris) == len(fileNames) == ...`` is checked (``:205``), so ``uris=None`` raises
    ``TypeError`` and unequal lengths raise ``ValueError`` (``:206-215``).
    """

    def __init__(self, sampleName=None, sampleDescription=None, uris=None, fileNames=None, nodeNames=None,
                 checksums=None, loadFiles=None, customDownloader=None, thumbnailFileName=None,
                 loadFileTypes=None, loadFileProperties=None, loadFileType=None):
        if loadFileType is not None and loadFileTypes is not None:
            raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
        if loadFileType is not None:
            loadFileTypes = loadFileType
        self.sampleName = sampleName
        self.sampleDescription = sampleDescription if sampleDescription is not None else sampleName
        if isinstance(uris, (list, tuple)):
            if isinstance(loadFileTypes, str) or loadFileTypes is None:
                loadFileTypes = [loadFileTypes] * len(uris)
            nodeNames = [None] * len(uris) if nodeNames is None else nodeNames
            loadFiles = [None] * len(uris) if loadFiles is None else loadFiles
            checksums = [None] * len(uris) if checksums is None else checksums
        elif isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
            loadFiles, loadFileTypes, checksums = [loadFiles], [loadFileTypes], [checksums]
        self.uris, self.fileNames, self.nodeNames = uris, fileNames, nodeNames
        self.loadFiles, self.customDownloader, self.thumbnailFileName = loadFiles, customDownloader, thumbnailFileName
        self.loadFileTypes, self.loadFileProperties, self.checksums = loadFileTypes, loadFileProperties or {}, checksums
        if not len(uris) == len(fileNames) == len(nodeNames) == len(loadFiles) == len(loadFileTypes) == len(checksums):
            raise ValueError("All fields of sample data source must have the same length")


class SampleDataLogic:
    """``SampleData.py`` 5.10 ``:496``, 5.8 ``:443``; the registry is ``slicer.modules.sampleDataSources``
    (category -> list of sources, ``:105-110``); here :data:`sources`."""

    sources: dict = {}

    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None, nodeNames=None,
                                       customDownloader=None, thumbnailFileName=None, loadFileTypes=None, loadFiles=None,
                                       loadFileProperties={}, checksums=None, loadFileType=None):  # noqa: B006 (Slicer's default)
        """5.10 ``:509-561``, 5.8 ``:456-508``: builds a :class:`SampleDataSource` (which checks its fields),
        appends it to its category and returns None.  There is no ``sampleDescription`` keyword."""
        source = SampleDataSource(sampleName=sampleName, uris=uris, fileNames=fileNames, nodeNames=nodeNames,
                                  thumbnailFileName=thumbnailFileName, loadFileTypes=loadFileTypes, loadFiles=loadFiles,
                                  loadFileProperties=loadFileProperties, checksums=checksums,
                                  customDownloader=customDownloader, loadFileType=loadFileType)
        SampleDataLogic.sources.setdefault(category, []).append(source)

    @staticmethod
    def clickSampleButton(sampleName):
        """What the Sample Data widget's button does (5.10 ``:445-448``, 5.8 ``:392-395``): a source with a
        ``customDownloader`` is handed to it as the one argument, and the return value is ignored."""
        for sources in SampleDataLogic.sources.values():
            for source in sources:
                if source.sampleName == sampleName:
                    if source.customDownloader:
                        source.customDownloader(source)
                        return
                    raise AssertionError("the double does not download URLs")
        raise IndexError(sampleName)  # downloadSample of an unknown name: 5.10 :987-991


def sample_data_module() -> types.ModuleType:
    SampleDataLogic.sources = {}
    module = types.ModuleType("SampleData")
    module.SampleDataSource = SampleDataSource
    module.SampleDataLogic = SampleDataLogic
    return module


# --- slicer.testing ----------------------------------------------------------------------------------
def run_unit_test(module, testname: str) -> unittest.TestResult:
    """``Base/Python/slicer/testing.py:14-28`` (both tags), as ctest runs it through ``slicer_add_python_unittest``
    (``CMake/SlicerMacroPythonTesting.cmake:75-96``): ``unittest.TestLoader().loadTestsFromName`` on the module,
    then ``TextTestRunner``.  The loader runs each ``test_*`` method with unittest's ``setUp``/``tearDown`` and
    never calls a ``runTest`` beside them, so a skip placed only in ``runTest`` is never reached."""
    sys.modules[testname] = module
    suite = unittest.TestLoader().loadTestsFromName(testname)
    return unittest.TextTestRunner(verbosity=0, stream=io.StringIO()).run(suite)


# --- DICOM database ----------------------------------------------------------------------------------
class DICOMDatabase:
    """``slicer.dicomDatabase`` (CTK's ctkDICOMDatabase) as the DICOM module leaves it after loading a series.

    DICOMScalarVolumePlugin.load puts the loaded files' SOP instance UIDs on the volume node, space-separated, in
    slice order, "Unknown" for a file whose UID the database could not give (Modules/Scripted/DICOMPlugins/
    DICOMScalarVolumePlugin.py:500-510 at v5.8.0 and v5.10.0); DICOMUtils.loadByInstanceUID refuses to ask a
    database that is not open and then calls ``fileForInstance(instanceUID)`` (Modules/Scripted/DICOMLib/
    DICOMUtils.py:278-282 at v5.8.0, 277-281 at v5.10.0).  ``fileForInstance`` takes one UID string and gives
    the file's path, or an empty string for an instance the database does not hold."""

    def __init__(self, files_by_uid: dict, is_open: bool = True):
        self._files = {str(uid): str(path) for uid, path in files_by_uid.items()}
        self.isOpen = is_open
        self.asked: list = []

    def fileForInstance(self, sopInstanceUID):
        if not isinstance(sopInstanceUID, str):
            raise TypeError(f"fileForInstance(QString): got {type(sopInstanceUID).__name__}")
        if not self.isOpen:
            raise AssertionError("fileForInstance asked of a closed database (DICOMUtils checks isOpen first)")
        self.asked.append(sopInstanceUID)
        return self._files.get(sopInstanceUID, "")


# --- PyTorchUtils ------------------------------------------------------------------------------------
class PyTorchUtilsLogic:
    """fepegar/SlicerPyTorch ``PyTorchUtils/PyTorchUtils.py`` at e1c85cc: ``torchInstalled()`` is static,
    ``installTorch(askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
    torchvisionVersionRequirement=None)`` returns the torch module or None when the user cancels, and asks only
    when ``askConfirmation`` is true and Slicer is not in testing mode.  Every install is recorded in
    :data:`installs` so a test can assert that none happened."""

    installs: list = []
    testing = True

    @staticmethod
    def torchInstalled():
        try:
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                     torchvisionVersionRequirement=None):
        PyTorchUtilsLogic.installs.append({"askConfirmation": askConfirmation, "testing": PyTorchUtilsLogic.testing,
                                           "torchVersionRequirement": torchVersionRequirement})
        import torch

        return torch
