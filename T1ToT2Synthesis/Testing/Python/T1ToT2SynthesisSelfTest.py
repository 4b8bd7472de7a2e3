"""GUI self-test of T1 to T2 Synthesis, run inside Slicer: drive the module panel as a user does.

The module's own T1ToT2SynthesisTest covers the logic; this one clicks the
widgets: select the phantom T1 and acquired T2, keep the bundled demo model,
press Synthesize T2 and wait for the background process while the event loop
runs, then Compare, Compute metrics and Line profile.
"""

import time
import unittest

import numpy as np
import qt
import slicer


class T1ToT2SynthesisSelfTest(unittest.TestCase):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_panel_synthesizes_and_compares_the_phantom()

    def waitFor(self, condition, timeout=600):
        deadline = time.time() + timeout
        while not condition():
            self.assertLess(time.time(), deadline, "timed out waiting for the module")
            slicer.app.processEvents(qt.QEventLoop.AllEvents, 100)

    def test_panel_synthesizes_and_compares_the_phantom(self):
        slicer.util.selectModule("T1ToT2Synthesis")
        widget = slicer.modules.t1tot2synthesis.widgetRepresentation().self()
        self.assertTrue(widget.logic.ensureDependencies(askConfirmation=False))
        from T1ToT2Lib.phantom import render as phantom
        from T1ToT2Lib.slicer import scene

        volumes = phantom.make_phantom(size="small", seed=0)
        t1 = scene.node_from_volume(volumes["right_t1"], "right T1")
        t2 = scene.node_from_volume(volumes["right_t2"], "right T2")

        widget.ui.inputT1Selector.setCurrentNode(t1)
        widget.ui.acquiredT2Selector.setCurrentNode(t2)
        widget.ui.useBundledModelCheckBox.checked = True
        widget.ui.deviceComboBox.currentText = "cpu"
        self.assertTrue(widget.ui.synthesizeButton.enabled)
        self.assertFalse(widget.ui.compareButton.enabled)

        widget.ui.synthesizeButton.click()
        self.assertTrue(widget.ui.cancelButton.visible)
        self.waitFor(lambda: widget._parameterNode.syntheticT2 is not None)
        synthetic = widget._parameterNode.syntheticT2
        self.assertEqual(synthetic.GetAttribute("T1ToT2.Synthetic"), "true")
        self.assertTrue(np.allclose(scene.world_ijk_to_ras(synthetic), scene.world_ijk_to_ras(t1), atol=1e-6))
        self.assertFalse(widget.ui.cancelButton.visible)

        widget.ui.compareButton.click()
        red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(red.GetBackgroundVolumeID(), t1.GetID())
        self.assertIsNotNone(red.GetForegroundVolumeID())

        widget.ui.metricsButton.click()
        self.assertGreater(widget._parameterNode.metricsTable.GetNumberOfRows(), 1)

        widget.ui.lineProfileButton.click()
        self.assertIsNotNone(widget._parameterNode.profileLine)
        rows = widget._lineProfile.table_node.GetNumberOfRows()
        self.assertGreater(rows, 10)
