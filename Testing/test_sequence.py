"""The T1 sequence (TR, TE, flip) a model learnt from is recorded in its file, read from where the field keeps a
T1's (DICOM attributes, a BIDS sidecar) and compared at synthesis: another contrast is said, on every engine's path."""

import json

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from test_dicom import _integer_volume, write_enhanced_mr, write_fake_t1
from test_train import tiny_pair

from T1ToT2Lib.cli import main
from T1ToT2Lib.core import sequence
from T1ToT2Lib.io.files import read_volume, write_volume
from T1ToT2Lib.networks.modelfile import load_model
from T1ToT2Lib.research.analysis import save_lookup_model

TRAINED = {"RepetitionTime": 0.0135, "EchoTime": 0.006, "FlipAngle": 10}  # BIDS: seconds and degrees
OTHER = {"RepetitionTime": 0.009, "EchoTime": 0.003, "FlipAngle": 12}


def _with_sidecar(volume, path, sidecar):
    write_volume(volume, path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))
    return path


def test_a_classic_dicom_series_gives_its_tr_te_and_flip(tmp_path):
    paths = write_fake_t1(_integer_volume(orientation="axial"), tmp_path / "series")
    assert sequence.META_KEY not in read_volume(tmp_path / "series").meta  # the writer stores no timing
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "9.0", "3", "12"
        ds.save_as(path)
    assert read_volume(tmp_path / "series").meta[sequence.META_KEY] == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}


def test_an_enhanced_mr_object_gives_them_from_its_functional_groups(tmp_path):
    path = tmp_path / "enhanced" / "mr.dcm"
    write_enhanced_mr(_integer_volume(orientation="axial"), path)
    ds = pydicom.dcmread(path)
    timing, echo = Dataset(), Dataset()
    timing.RepetitionTime, timing.FlipAngle = "7.5", "9"  # PS3.3 C.8.13.5.2, MR Timing and Related Parameters
    echo.EffectiveEchoTime = 2.46  # FD; PS3.3 C.8.13.5.3, MR Echo
    shared = ds.SharedFunctionalGroupsSequence[0]
    shared.MRTimingAndRelatedParametersSequence, shared.MREchoSequence = [timing], [echo]
    ds.save_as(path)
    assert read_volume(path.parent).meta[sequence.META_KEY] == {"TR": 7.5, "TE": 2.46, "flip_deg": 9.0}


def test_a_bids_sidecar_gives_the_sequence_in_milliseconds_and_a_broken_one_a_note(tmp_path):
    t1, _ = tiny_pair()
    read = read_volume(_with_sidecar(t1, tmp_path / "t1.nii.gz", OTHER))
    assert read.meta[sequence.META_KEY] == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}
    (tmp_path / "t1.json").write_text("{\"RepetitionTime\": 0.009,")  # cut short
    read = read_volume(tmp_path / "t1.nii.gz")
    assert sequence.META_KEY not in read.meta and np.array_equal(read.array, t1.array)
    (note,) = read.meta["notes"]
    assert "t1.json" in note and "unknown" in note
    # Incomplete: no flip angle, so no sequence (a partial one would compare against nothing).
    (tmp_path / "t1.json").write_text(json.dumps({"RepetitionTime": 0.009, "EchoTime": 0.003}))
    assert sequence.META_KEY not in read_volume(tmp_path / "t1.nii.gz").meta


def test_a_model_records_its_t1s_sequence_and_notes_a_t1_of_another_or_of_none(tmp_path, capsys):
    t1, t2 = tiny_pair()
    trained_t1 = read_volume(_with_sidecar(t1, tmp_path / "left_t1.nii.gz", TRAINED))
    model = save_lookup_model(tmp_path / "lookup.safetensors", trained_t1, t2, bins=16)
    assert load_model(model).metadata["training"]["t1_sequences"] == [{"TR": 13.5, "TE": 6.0, "flip_deg": 10.0}]

    def synthesize(name, sidecar):
        t1_path = _with_sidecar(t1, tmp_path / f"{name}.nii.gz", sidecar)
        out = tmp_path / f"{name}_syn.nii.gz"
        code = main(["synthesize", str(model), str(t1_path), str(out), "--device", "cpu", "--progress", "json"])
        captured = capsys.readouterr()
        done = json.loads(captured.out.splitlines()[-1])
        assert code == 0 and done["event"] == "done"
        assert not out.with_name(out.name.replace(".nii.gz", ".json")).exists()  # the T1's timing is not the T2's
        return done["notes"], captured.err

    notes, err = synthesize("other", OTHER)
    (note,) = [n for n in notes if "TE 3 ms" in n]
    assert "TR 9 ms, TE 3 ms, flip 12°" in note and "TR 13.5 ms, TE 6 ms, flip 10°" in note
    assert err.count(note) == 1
    # Within a protocol's rounding (TE 6.2 ms, flip 10.5°) nothing is said.
    near = {"RepetitionTime": 0.0135, "EchoTime": 0.0062, "FlipAngle": 10.5}
    for name, sidecar in (("same", TRAINED), ("near", near)):
        notes, err = synthesize(name, sidecar)
        assert not any("tissue contrast" in n for n in notes) and "tissue contrast" not in err, name
    # A T1 without any record (a bare NIfTI) is said to be unchecked, naming what the model learnt from and the fix.
    notes, err = synthesize("unknown", None)
    (note,) = [n for n in notes if "tissue contrast" in n]
    assert "no sequence parameters" in note and "TR 13.5 ms, TE 6 ms, flip 10°" in note and "sidecar" in note
    assert err.count(note) == 1


def test_each_parameter_alone_beyond_the_tolerance_is_named():
    trained = sequence.make(13.5, 6.0, 10.0)
    assert sequence.differing(sequence.make(13.5, 6.0, 10.0), trained) == []
    assert sequence.differing(sequence.make(15.2, 6.0, 10.0), trained) == ["TR"]
    assert sequence.differing(sequence.make(13.5, 5.3, 10.0), trained) == ["TE"]
    assert sequence.differing(sequence.make(13.5, 6.0, 11.5), trained) == ["flip_deg"]
    # A model trained on several protocols accepts a T1 of any of them.
    assert sequence.mismatch(sequence.make(9.0, 3.0, 12.0), [trained, sequence.make(9.1, 3.0, 12.0)]) is None
    assert sequence.make(13.5, float("nan"), 10.0) is None and sequence.make(13.5, 0, 10.0) is None
    # Nothing to say where there is nothing to compare: a known T1 sequence, or a model file without the record.
    assert sequence.unchecked(trained, [trained]) is None and sequence.unchecked(None, []) is None


@pytest.mark.parametrize("sidecar", [{"RepetitionTime": [0.009], "EchoTime": [0.003, 0.006], "FlipAngle": 12}])
def test_a_multi_echo_sidecar_is_read_at_its_first_echo(sidecar):
    assert sequence.from_bids(sidecar) == {"TR": 9.0, "TE": 3.0, "flip_deg": 12.0}


@pytest.mark.parametrize("model, engine", [("demo_model.safetensors", "torch"), ("demo_model.onnx", "onnx")])
def test_the_bundled_model_notes_another_vibe_on_both_engines(tmp_path, capsys, model, engine):
    """The bundled model predates the record: its phantom pairs' acquisitions give its VIBE (TR 13.5 ms, TE 6 ms,
    flip 10°, render.VIBE), so the robustness table's "another VIBE" T1 is noted on either engine, on stderr and in
    the "done" event the Slicer panel and the browser read."""
    from pathlib import Path

    from T1ToT2Lib.phantom.render import VIBE

    bundled = Path(__file__).resolve().parents[1] / "Resources" / model
    assert sequence.trained(load_model(bundled.with_suffix(".safetensors")).metadata) == [
        {"TR": VIBE["TR"], "TE": VIBE["TE"], "flip_deg": VIBE["flip_deg"]}]
    t1, _ = tiny_pair()
    t1_path = _with_sidecar(t1, tmp_path / "t1.nii.gz", OTHER)
    out, error = tmp_path / "syn.nii.gz", tmp_path / "err.nii.gz"
    code = main(["synthesize", str(bundled), str(t1_path), str(out), "--device", "cpu", "--engine", engine,
                 "--uncertainty", str(error), "--progress", "json"])
    captured = capsys.readouterr()
    assert code == 0
    (note,) = [n for n in json.loads(captured.out.splitlines()[-1])["notes"] if "tissue contrast" in n]
    assert "TR 9 ms, TE 3 ms, flip 12°" in note and "TR 13.5 ms, TE 6 ms, flip 10°" in note
    assert captured.err.count(note) == 1
