"""The two modules' self-test scenarios, run by their Test classes inside Slicer (and headless by the pytest suite).

Each takes the ``unittest.TestCase`` that runs it (for its assertions and
``delayDisplay``) and the module's logic.  The Test classes skip in ``setUp``
when PyTorch or the requirements are missing: nothing is installed during ctest.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import numpy as np
import slicer.util

from . import scene
from .synthesis_module import LAST_TRAINED_MODEL_SETTING


def synthesis_on_the_phantom(test, logic) -> None:
    """Synthesize the phantom's left hand with the bundled model in the background process, then in this one,
    compare, score, profile and export it as DICOM."""
    from ..phantom import render as phantom

    modelPath = logic.bundledModelPath()
    test.assertIsNotNone(modelPath, "the bundled demo model must be installed with the module")

    test.delayDisplay("Generating the phantom")
    volumes = phantom.make_phantom(size="small", seed=0)
    t1Node = scene.node_from_volume(volumes["left_t1"], "left T1")
    t2Node = scene.node_from_volume(volumes["left_t2"], "left T2")

    test.delayDisplay("Synthesizing in the background process")

    workDir = tempfile.mkdtemp(prefix="T1ToT2-test-")
    job = logic.startSynthesisJob(t1Node, modelPath, "axial", "cpu", "fp32", workDir)
    job.run_to_end(timeout=600)
    synthetic = logic.finishSynthesisJob(job, t1Node)
    test.assertEqual(synthetic.GetAttribute("T1ToT2.Synthetic"), "true")
    test.assertTrue(np.allclose(scene.world_ijk_to_ras(synthetic), scene.world_ijk_to_ras(t1Node), atol=1e-6))
    test.assertEqual(slicer.util.arrayFromVolume(synthetic).shape, slicer.util.arrayFromVolume(t1Node).shape)
    test.assertGreater(float(np.std(slicer.util.arrayFromVolume(synthetic))), 0.0)

    test.delayDisplay("In-process synthesis reuses the same node")
    again = logic.synthesize(t1Node, modelPath, plane="axial", device="cpu")
    test.assertEqual(again.GetID(), synthetic.GetID())

    test.delayDisplay("Compare, metrics and line profile")
    difference = logic.showComparison(t1Node, t2Node, synthetic)
    test.assertIsNotNone(difference)
    table = logic.computeMetrics(synthetic, t2Node)
    columns = scene.table_columns(table)
    test.assertTrue(any("SSIM" in str(name).upper() for name in columns))
    line = logic.createProfileLine(synthetic)
    profile = logic.lineProfile(line, [t1Node, t2Node, synthetic])
    profile.update()
    test.assertGreater(profile.table_node.GetNumberOfRows(), 10)
    profile.remove_observers()

    test.delayDisplay("DICOM export")
    written = logic.exportDicom(synthetic, t1Node, pathlib.Path(workDir) / "dicom")
    test.assertEqual(len(written), slicer.util.arrayFromVolume(synthetic).shape[0])
    shutil.rmtree(workDir, ignore_errors=True)
    test.delayDisplay("Test passed")


def training_one_tiny_epoch(test, logic) -> None:
    """Train one tiny Pix2Pix epoch on the phantom in the background process, as the Start button does, then
    evaluate it twice on the validation pair (its nodes reused)."""
    from ..networks import modelfile

    test.delayDisplay("Generating the phantom")
    nodes = logic.generatePhantomNodes()
    test.assertTrue(nodes["left_labels"].IsA("vtkMRMLLabelMapVolumeNode"))
    workDir = pathlib.Path(tempfile.mkdtemp(prefix="T1ToT2-test-"))
    p = logic.getParameterNode()
    p.trainT1, p.trainT2 = nodes["left_t1"], nodes["left_t2"]
    p.validationT1, p.validationT2 = nodes["right_t1"], nodes["right_t2"]
    p.planeCoronal = p.planeSagittal = False
    p.modelType = "pix2pix"  # one tiny epoch of a small U-Net (the refiner would fit its trees first)
    p.epochs, p.generatorWidth, p.maxStepsPerEpoch, p.batchSize, p.device = 1, 8, 2, 2, "cpu"
    p.outputModelPath = workDir / "tiny.safetensors"

    test.delayDisplay("Training one tiny epoch in the background")
    job = logic.startTrainingJob(p, workDir=workDir / "inputs")
    lossPlot = logic.newLossPlot()
    table = logic.newValidationTable()
    job.run_to_end(timeout=600)
    for event in job.events:
        logic.recordEvent(event, lossPlot, table)
    path = logic.finishTrainingJob(job)
    test.assertTrue(path.is_file())
    test.assertEqual(lossPlot.table_node.GetNumberOfRows(), 2)
    test.assertEqual(table.GetNumberOfRows(), 1)

    test.delayDisplay("The model loads and is remembered for the Synthesis module")
    loaded = modelfile.load_model(path)
    test.assertEqual(loaded.metadata["planes"], ["axial"])
    test.assertEqual(pathlib.Path(logic.settings.value(LAST_TRAINED_MODEL_SETTING)), path)

    test.delayDisplay("Evaluation on the validation pair, in the background, on the model's plane")
    result = logic.evaluateModel(path, nodes["right_t1"], nodes["right_t2"], workDir=workDir / "evaluation")
    test.assertTrue(np.allclose(scene.world_ijk_to_ras(result["synthetic"]), scene.world_ijk_to_ras(nodes["right_t1"])))
    test.assertGreater(result["profile"].table_node.GetNumberOfRows(), 10)
    again = logic.evaluateModel(path, nodes["right_t1"], nodes["right_t2"], workDir=workDir / "evaluation2")
    test.assertEqual([again[k].GetID() for k in ("metrics", "line")], [result[k].GetID() for k in ("metrics", "line")])
    again["profile"].remove_observers()
    shutil.rmtree(workDir, ignore_errors=True)
    test.delayDisplay("Test passed")
