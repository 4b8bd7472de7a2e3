"""The Training module on several pairs, driven as a user drives it on the real headless MRML scene.

Additional T1/T2 pairs (Add pair / Remove pair), a pairs CSV and rendered phantom subjects become the options of
``t1tot2 train`` (repeated --t1/--t2, --pairs, --phantom-subjects, --randomize); what the command line refuses is
refused by the panel in one line before anything is installed, written or started.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")

import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
from slicer_scene import mrml_scene  # noqa: E402,F401  (fixture)
from test_slicer_modules import _training_widget, modules, small_t1  # noqa: E402,F401  (fixture)

from T1ToT2Lib.cli import build_parser, main  # noqa: E402
from T1ToT2Lib.cli.train import _given_pairs  # noqa: E402
from T1ToT2Lib.core.errors import T1ToT2Error  # noqa: E402
from T1ToT2Lib.core.volume import Volume  # noqa: E402
from T1ToT2Lib.slicer import scene as sc  # noqa: E402
from T1ToT2Lib.slicer.settings import TrainingSettings  # noqa: E402

#: RAS (Slicer, this library) to LPS (ITK, NRRD files): x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def second_grid_t1() -> Volume:
    """A T1 on another grid than :func:`small_t1`: other size, anisotropic spacing, origin and a rotation about z."""
    angle = np.deg2rad(17.0)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    array = np.random.default_rng(8).uniform(5, 300, size=(9, 14, 11)).astype(np.float32)
    return Volume.from_geometry(array, spacing=(1.6, 0.45, 3.0), origin=(40.0, -7.5, -21.0), direction=direction)


def assert_file_holds(path, volume: Volume) -> None:
    """The file read back with SimpleITK has the volume's voxels, spacing, origin and direction (in LPS)."""
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(image.GetSpacing(), volume.spacing, rtol=0, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), RAS_TO_LPS @ volume.origin, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), RAS_TO_LPS @ volume.direction, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), volume.array)


@pytest.fixture
def panel_with_two_pairs(modules, tmp_path):
    """The widget over a first pair on one grid and an additional pair, added with Add pair, on another."""
    _, training = modules
    widget = _training_widget(training)
    first, second = small_t1(), second_grid_t1()
    p = widget._parameterNode
    p.trainT1, p.trainT2 = sc.node_from_volume(first, "VIBE A"), sc.node_from_volume(first.with_array(first.array * 0.5), "SPACE A")
    p.outputModelPath = tmp_path / "model.safetensors"
    widget.panel.addPair(sc.node_from_volume(second, "VIBE B"), sc.node_from_volume(second.with_array(second.array + 1), "SPACE B"))
    return widget, first, second


def test_two_pairs_on_different_grids_reach_the_command_line_in_order_with_their_exact_geometry(panel_with_two_pairs, tmp_path):
    widget, first, second = panel_with_two_pairs
    p = widget._parameterNode
    assert widget.ui.extraPairsListWidget.items == ["VIBE B  /  SPACE B"]
    assert "2 training pairs" in widget.ui.statusLabel.text and widget.ui.removePairButton.enabled
    args = widget.logic.trainArguments(p, tmp_path / "work")
    parsed = build_parser().parse_args(args)
    assert len(parsed.t1) == len(parsed.t2) == 2 and parsed.model == "refiner" and parsed.pairs is None
    expected = [(first, first.with_array(first.array * 0.5)), (second, second.with_array(second.array + 1))]
    for (t1_file, t2_file), (t1, t2) in zip(zip(parsed.t1, parsed.t2), expected):
        assert_file_holds(t1_file, t1)
        assert_file_holds(t2_file, t2)
    # The real command line reads them as the same two pairs, in the same order.
    assert _given_pairs(parsed) == list(zip(parsed.t1, parsed.t2))

    widget.panel.removePair(0)
    assert widget.ui.extraPairsListWidget.items == [] and not widget.ui.removePairButton.enabled
    parsed = build_parser().parse_args(widget.logic.trainArguments(p, tmp_path / "work"))
    assert len(parsed.t1) == 1
    assert_file_holds(parsed.t1[0], first)


def test_csv_and_phantom_subjects_become_the_cli_options(modules, tmp_path):
    _, training = modules
    widget = _training_widget(training)
    p = widget._parameterNode
    p.outputModelPath = tmp_path / "model.safetensors"
    p.phantomSubjects, p.randomizeAcquisition = 3, True
    widget.panel.updateButtons()
    assert widget.ui.startButton.enabled  # phantom subjects alone are training data, as for `t1tot2 train`
    parsed = build_parser().parse_args(widget.logic.trainArguments(p, tmp_path / "work"))
    assert parsed.t1 is None and parsed.phantom_subjects == 3 and parsed.randomize and _given_pairs(parsed) == []

    csv = tmp_path / "pairs.csv"
    csv.write_text("t1,t2\nscans/a_t1.nrrd,scans/a_t2.nrrd\n/data/b_t1,/data/b_t2\n")
    p.pairsCsvPath, p.phantomSubjects, p.randomizeAcquisition = csv, 0, False
    args = widget.logic.trainArguments(p, tmp_path / "work")
    assert "--phantom-subjects" not in args and "--randomize" not in args
    parsed = build_parser().parse_args(args)
    assert parsed.pairs == str(csv)
    assert _given_pairs(parsed) == [(tmp_path / "scans" / "a_t1.nrrd", tmp_path / "scans" / "a_t2.nrrd"),
                                    (Path("/data/b_t1"), Path("/data/b_t2"))]


@pytest.mark.parametrize("case, expected", [
    ("gan", "refiner only"),
    ("randomize", "untick randomize"),
    ("missing csv", "does not exist"),
    ("other grid", "additional pair 1"),
])
def test_what_the_command_line_refuses_is_refused_in_one_line_before_anything_starts(
        panel_with_two_pairs, tmp_path, monkeypatch, case, expected):
    widget, first, second = panel_with_two_pairs
    p = widget._parameterNode
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text), raising=False)
    monkeypatch.setattr(widget.logic, "ensureDependencies", lambda *a, **k: pytest.fail("nothing may be installed"))
    monkeypatch.setattr(widget.logic, "startTrainingJob", lambda *a, **k: pytest.fail("no training may start"))
    if case == "gan":
        p.modelType = "pix2pix"
    elif case == "randomize":
        p.randomizeAcquisition = True
    elif case == "missing csv":
        p.pairsCsvPath = tmp_path / "no such pairs.csv"
    else:  # the additional T2 on a grid of its own, the align box unticked
        p.extraTrainT2 = [sc.node_from_volume(first, "SPACE B elsewhere")]
    widget.panel.startTraining(resume=False)
    (text,) = shown
    assert expected in text and "\n" not in text and "Traceback" not in text
    assert expected in widget.ui.statusLabel.text and widget.panel.jobs.job is None
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("change, cli_extra, cli_says", [
    ({"model": "pix2pix"}, [], "train the refiner only"),
    ({"randomize": True}, [], "--randomize applies to --phantom-subjects"),
    ({}, ["--pairs", "missing.csv"], "does not exist"),
])
def test_the_settings_refuse_what_the_real_command_line_refuses(tmp_path, capsys, change, cli_extra, cli_says):
    """Each refusal of asArgList is one the command line makes too (its own run, exit 2, one line)."""
    from T1ToT2Lib.io.files import write_volume

    settings = TrainingSettings.for_model(change.get("model", "refiner"), randomize=change.get("randomize", False),
                                         pairs_csv=str(tmp_path / cli_extra[1]) if cli_extra else None)
    files = [str(write_volume(volume, tmp_path / f"{n}.nrrd"))
             for n, volume in zip(("a1", "a2", "b1", "b2"), (small_t1(), small_t1(), second_grid_t1(), second_grid_t1()))]
    with pytest.raises(T1ToT2Error) as refused:
        settings.asArgList(files[0], files[1], tmp_path / "m.safetensors", extra_pairs=[(files[2], files[3])])
    assert "\n" not in str(refused.value)
    # The same request, written by hand as the CLI's options: the command refuses it before reading any volume.
    argv = ["train", "--t1", files[0], "--t2", files[1], "--t1", files[2], "--t2", files[3],
            "--model", change.get("model", "refiner"), "--out", str(tmp_path / "m.safetensors"), "--progress", "none"]
    argv += (["--randomize"] if change.get("randomize") else []) + ([cli_extra[0], str(tmp_path / cli_extra[1])] if cli_extra else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("t1tot2 train: error:") and cli_says in err and "\n" not in err


def test_one_start_reads_the_pairs_csv_once(modules, tmp_path, monkeypatch):
    """Start and Resume pressed as the user presses them (checks, install, volumes written, job started): each reads
    the pairs CSV once, and the job gets the CSV the check accepted."""
    import sys

    from T1ToT2Lib.slicer import jobs
    from T1ToT2Lib.training import pairs as pairs_module

    _, training = modules
    widget = _training_widget(training)
    p = widget._parameterNode
    first = small_t1()
    p.trainT1, p.trainT2 = sc.node_from_volume(first, "VIBE A"), sc.node_from_volume(first.with_array(first.array * 0.5), "SPACE A")
    # a validation pair: the recommended refiner trains its CNN stage (what Resume continues) only when one can judge it
    p.validationT1, p.validationT2 = sc.node_from_volume(first, "VIBE V"), sc.node_from_volume(first, "SPACE V")
    csv = tmp_path / "pairs.csv"
    csv.write_text("t1,t2\nscans/b_t1.nrrd,scans/b_t2.nrrd\n")
    p.pairsCsvPath, p.outputModelPath = csv, tmp_path / "model.safetensors"
    reads, started = [], []
    read_pairs_csv, start = pairs_module.read_pairs_csv, jobs.BackgroundJob.start
    monkeypatch.setattr(pairs_module, "read_pairs_csv", lambda path: reads.append(Path(path)) or read_pairs_csv(path))
    monkeypatch.setattr(widget.logic, "ensureDependencies", lambda *a, **k: True)

    def start_a_child_that_exits(job):  # the real job, its command recorded; no training runs
        started.append(job.argv)
        job.argv = [sys.executable, "-c", "pass"]
        return start(job)

    monkeypatch.setattr(jobs.BackgroundJob, "start", start_a_child_that_exits)
    try:
        for presses, resume in enumerate((False, True), start=1):
            widget.panel.startTraining(resume=resume)
            assert widget.panel.jobs.job is not None, widget.ui.statusLabel.text
            assert reads == [csv] * presses and len(started) == presses
            parsed = build_parser().parse_args(started[-1][started[-1].index("train"):])
            assert parsed.pairs == str(csv) and parsed.resume is resume and len(parsed.t1) == 1
            widget.panel.jobs.stop()
    finally:
        widget.panel.jobs.stop()


@pytest.mark.parametrize("path, empty", [(None, True), ("", True), (".", True), (Path(""), True), (" . ", True),
                                         ("model.safetensors", False), (Path("/data/pairs.csv"), False), ("./m", False)])
def test_an_empty_path_line_edit_is_no_path(path, empty):
    from T1ToT2Lib.slicer.settings import path_is_empty

    assert path_is_empty(path) is empty
    # An empty pairs CSV line edit is no CSV: no --pairs (a real one reaches the command line).
    settings = TrainingSettings.for_model("refiner", pairs_csv=path)
    assert (settings.pairs_csv is None) is empty


def test_start_stays_disabled_without_an_output_model_file(modules, tmp_path):
    _, training = modules
    widget = _training_widget(training)
    p = widget._parameterNode
    first = small_t1()
    p.trainT1, p.trainT2 = sc.node_from_volume(first, "VIBE A"), sc.node_from_volume(first.with_array(first.array * 0.5), "SPACE A")
    for empty in (Path(""), Path(".")):  # what the empty path line edit stores
        p.outputModelPath = empty
        widget.panel.updateButtons()
        assert not widget.ui.startButton.enabled and not widget.ui.resumeButton.enabled
        with pytest.raises(T1ToT2Error, match="no output model file"):
            widget.logic.checkTrainingData(p)
    p.outputModelPath = tmp_path / "model.safetensors"
    widget.panel.updateButtons()
    assert widget.ui.startButton.enabled and widget.ui.resumeButton.enabled


def test_asarglist_checks_unless_given_the_check_of_these_very_settings_and_pairs(tmp_path, monkeypatch):
    from T1ToT2Lib.training import pairs as pairs_module

    csv = tmp_path / "pairs.csv"
    csv.write_text("a_t1.nrrd,a_t2.nrrd\n")
    reads = []
    read_pairs_csv = pairs_module.read_pairs_csv
    monkeypatch.setattr(pairs_module, "read_pairs_csv", lambda path: reads.append(path) or read_pairs_csv(path))
    settings = TrainingSettings.for_model("refiner", pairs_csv=str(csv))
    out = tmp_path / "m.safetensors"
    settings.asArgList(None, None, out)  # a caller that did not check: checked here
    assert len(reads) == 1
    record = settings.check_data([])
    assert len(reads) == 2
    assert "--pairs" in settings.asArgList(None, None, out, checked=record) and len(reads) == 2
    with pytest.raises(T1ToT2Error, match="lacks its T1 or T2"):  # other pairs than the checked ones
        settings.asArgList("a.nrrd", None, out, checked=record)
    settings.model = "pix2pix"  # changed after its check: checked again, and refused as `t1tot2 train` refuses it
    with pytest.raises(T1ToT2Error, match="refiner only"):
        settings.asArgList(None, None, out, checked=record)
