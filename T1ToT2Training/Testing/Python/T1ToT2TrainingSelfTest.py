"""GUI self-test of T1 to T2 Training, run inside Slicer: generate the phantom, train, cancel, resume.

Drives the panel's buttons with a tiny network (width 8, two steps per
epoch, axial only) so it finishes in seconds on a CPU, and checks the loss
chart, the per-epoch validation table, and that the model reaches the
Synthesis module.
"""

import pathlib
import tempfile
import time
import unittest

import qt
import slicer


class T1ToT2TrainingSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_trains_a_tiny_model_on_the_phantom()

    def waitFor(self, condition, timeout=900):
        deadline = time.time() + timeout
        while not condition():
            self.assertLess(time.time(), deadline, "timed out waiting for training")
            slicer.app.processEvents(qt.QEventLoop.AllEvents, 100)

    def test_panel_trains_a_tiny_model_on_the_phantom(self):
        slicer.util.selectModule("T1ToT2Training")
        widget = slicer.modules.t1tot2training.widgetRepresentation().self()
        widget.ui.generatePhantomButton.click()
        p = widget._parameterNode
        self.assertIsNotNone(p.trainT1)
        self.assertIsNotNone(p.validationT2)

        model = pathlib.Path(tempfile.mkdtemp(prefix="T1ToT2-selftest-")) / "tiny.safetensors"
        p.outputModelPath = model
        p.planeCoronal = p.planeSagittal = False
        p.epochs, p.generatorWidth, p.maxStepsPerEpoch, p.batchSize, p.device = 2, 8, 2, 2, "cpu"
        self.assertTrue(widget.ui.startButton.enabled)

        widget.ui.startButton.click()
        self.waitFor(lambda: widget._job is None)
        self.assertTrue(model.is_file(), widget.ui.statusLabel.text)
        self.assertGreater(widget._lossPlot.table_node.GetNumberOfRows(), 0)
        self.assertEqual(p.validationTable.GetNumberOfRows(), 2)

        import T1ToT2Synthesis

        synthesisParameters = T1ToT2Synthesis.T1ToT2SynthesisLogic().getParameterNode()
        self.assertFalse(synthesisParameters.useBundledModel)
        self.assertEqual(pathlib.Path(synthesisParameters.modelPath), model)
