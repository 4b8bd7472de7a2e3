"""Training: the loss falls, resume is exact, cancel keeps the checkpoint, and the CLI reports in JSON."""

import json
import threading

import numpy as np
import pytest
import torch

from T1ToT2Lib.cli import main
from T1ToT2Lib.inference.slices import foreground_scale
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.modelfile import LoadedModel, load_model
from T1ToT2Lib.inference.synthesize import synthesize_volume
from T1ToT2Lib.training.train import CHECKPOINT_NAME, TrainConfig, TrainingCancelled, train
from T1ToT2Lib.core.volume import PLANES, Volume
from T1ToT2Lib.io.files import write_volume

TINY_NET = {"ngf": 8, "ndf": 8, "depth": 3}


def tiny_pair(shape=(24, 32, 40), seed=0, spacing=(1.0, 1.2, 2.0), direction=None):
    """A small T1/T2 pair with the phantom's key property: fat is dark on T1 but bright on T2, like bone on both."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt((k / 0.8) ** 2 + (j / 0.7) ** 2 + (i / 0.75) ** 2)
    t1 = np.zeros(shape, np.float32)
    t2 = np.zeros(shape, np.float32)
    muscle = r < 0.8
    fat = (r >= 0.8) & (r < 1.0)
    bone = np.sqrt((j / 0.25) ** 2 + (i / 0.25) ** 2) < 1
    fluid = ((k - 0.3) ** 2 + (j + 0.3) ** 2 + (i - 0.3) ** 2) < 0.05
    t1[muscle], t2[muscle] = 100, 40
    t1[fat], t2[fat] = 12, 150
    t1[bone & muscle], t2[bone & muscle] = 8, 5
    t1[fluid], t2[fluid] = 60, 220
    t1 += rng.normal(0, 2, shape).astype(np.float32)
    t2 += rng.normal(0, 2, shape).astype(np.float32)
    a = Volume.from_geometry(np.abs(t1), spacing=spacing, origin=(3.0, -7.0, 11.0), direction=direction)
    return a, a.with_array(np.abs(t2))


def tiny_config(tmp_path, **overrides):
    t1, t2 = tiny_pair()
    values = dict(t1=t1, t2=t2, out=tmp_path / "model.safetensors", network=TINY_NET, planes=("axial",),
                  epochs=1, device="cpu", seed=3, max_steps_per_epoch=6)
    values.update(overrides)
    return TrainConfig(**values)


def synthesis_l1(model, t1, t2, t2_scale):
    """Mean |synthetic - acquired| T2 in units of the T2 scale, through the user-facing synthesis path."""
    synthetic = synthesize_volume(model, t1, plane="axial", device="cpu")
    return float(np.mean(np.abs(synthetic.array - t2.array))) / t2_scale


@pytest.fixture(scope="module")
def phantom_crop():
    """20 axial slices through the small phantom's left hand (fat bright on T2, dark on T1, like bone)."""
    from T1ToT2Lib.phantom.render import make_phantom

    hand = make_phantom(size="small", seed=0)
    t1, t2 = hand["left_t1"], hand["left_t2"]
    axis = t1.plane_axis("axial")
    keep = [slice(None)] * 3
    keep[axis] = slice(90, 110)
    crop = tuple(keep)
    origin = t1.ijk_to_ras_points([[s.start or 0 for s in crop[::-1]]])[0]
    matrix = t1.ijk_to_ras.copy()
    matrix[:3, 3] = origin
    return Volume(t1.array[crop], matrix), Volume(t2.array[crop], matrix)


def test_one_epoch_lowers_the_l1_loss(tmp_path, phantom_crop):
    from T1ToT2Lib import networks

    t1, t2 = phantom_crop
    config = tiny_config(tmp_path, t1=t1, t2=t2, epochs=1, max_steps_per_epoch=None, lr=2e-3)
    # The untrained generator, built exactly as train() builds it from the same seed.
    torch.manual_seed(config.seed)
    net_config = networks.default_config("pix2pix", in_channels=1, **TINY_NET)
    t2_scale = foreground_scale(t2.array)
    untrained = LoadedModel(generator=networks.build_model(net_config).generator, config=net_config, metadata={},
                            planes=["axial"], in_channels=1, t2_scale=t2_scale, t1_percentile=99.5,
                            multiple=networks.required_multiple(net_config))

    trained = load_model(train(config))
    assert trained.t2_scale == pytest.approx(t2_scale)
    before = synthesis_l1(untrained, t1, t2, t2_scale)
    after = synthesis_l1(trained, t1, t2, t2_scale)
    assert after < 0.7 * before, (before, after)  # measured on this machine: 0.197 -> 0.080


@pytest.mark.parametrize("model,network", [
    ("pix2pix", TINY_NET),
    ("cyclegan", {"ngf": 8, "ndf": 8, "n_blocks": 1, "pool_size": 2}),  # its image pool must survive the resume too
])
def test_resume_after_cancel_matches_an_uninterrupted_run(tmp_path, model, network):
    straight = train(tiny_config(tmp_path / "a", epochs=2, model=model, network=network))

    cancel = threading.Event()

    def cancel_after_first_epoch(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            cancel.set()

    interrupted = tiny_config(tmp_path / "b", epochs=2, model=model, network=network)
    with pytest.raises(TrainingCancelled):
        train(interrupted, progress=cancel_after_first_epoch, cancel_event=cancel)
    assert not interrupted.out.exists(), "a cancelled run must not leave a model file"
    assert (interrupted.resolved_checkpoint_dir() / CHECKPOINT_NAME).exists()
    assert not list(interrupted.out.parent.glob("*.partial*"))

    interrupted.resume = True
    resumed = train(interrupted)
    a, b = load_model(straight).generator.state_dict(), load_model(resumed).generator.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resume_refuses_changed_settings(tmp_path):
    config = tiny_config(tmp_path, epochs=1)
    train(config)
    config.epochs, config.resume, config.lr = 2, True, 1e-3
    with pytest.raises(T1ToT2Error, match="lr"):
        train(config)


def test_cli_json_progress_reports_every_event(tmp_path, capsys):
    t1, t2 = tiny_pair()
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    out = tmp_path / "m.safetensors"
    code = main([
        "train", "--model", "pix2pix", "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"),
        "--val-t1", str(tmp_path / "t1.nii.gz"), "--val-t2", str(tmp_path / "t2.nii.gz"),
        "--planes", "axial,coronal", "--epochs", "1", "--max-steps-per-epoch", "3", "--ngf", "8", "--ndf", "8",
        "--depth", "3", "--device", "cpu", "--out", str(out), "--progress", "json", "--loss-csv", str(tmp_path / "loss.csv"),
    ])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    kinds = [e["event"] for e in events]
    assert kinds == ["start", "step", "step", "step", "epoch", "done"]
    step = events[1]
    assert {"epoch", "step", "steps", "losses", "eta_s"} <= step.keys() and step["steps"] == 3
    assert all(np.isfinite(v) for v in step["losses"].values())
    epoch = events[4]
    assert set(epoch["val_metrics"]) >= {"nrmse", "psnr", "ssim"}
    assert all(np.isfinite(epoch["val_metrics"][k]) for k in ("nrmse", "psnr", "ssim"))
    assert epoch["val_metrics"]["nrmse"] > 0
    assert epoch["checkpoint"].endswith(CHECKPOINT_NAME)
    assert events[-1]["model"] == str(out) and out.exists()
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,") and len(rows) == 4
    assert load_model(out).metadata["validation_metrics"]["nrmse"] == pytest.approx(epoch["val_metrics"]["nrmse"])


def test_cli_refuses_mismatched_t1_t2_in_one_line(tmp_path, capsys):
    t1, _ = tiny_pair()
    _, t2 = tiny_pair(shape=(24, 32, 36))
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    code = main(["train", "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"),
                 "--out", str(tmp_path / "m.safetensors"), "--device", "cpu", "--progress", "none"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "resample" in err and err.startswith("t1tot2 train: error:")
    assert not (tmp_path / "m.safetensors").exists()


def test_sigterm_stops_the_cli_keeping_the_last_checkpoint_and_no_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from safetensors import safe_open

    t1, t2 = tiny_pair()
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    out = tmp_path / "m.safetensors"
    command = [sys.executable, "-m", "T1ToT2Lib.cli", "train", "--model", "pix2pix", "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"),
               "--planes", "axial", "--epochs", "200", "--max-steps-per-epoch", "3", "--ngf", "8", "--ndf", "8", "--depth", "3",
               "--device", "cpu", "--out", str(out), "--progress", "json"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        for line in process.stdout:
            if json.loads(line)["event"] == "epoch":
                process.send_signal(signal.SIGTERM)
                break
        rest, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert json.loads(rest.strip().splitlines()[-1])["event"] == "cancelled"
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))
    with safe_open(str(tmp_path / "m.checkpoints" / CHECKPOINT_NAME), framework="pt") as handle:
        assert 1 <= int(handle.metadata()["epoch"]) < 200


@pytest.mark.parametrize("preset, expected", [
    ("recommended", {"upsample": "resize", "norm": "instance", "in_channels": 3}),
    ("paper", {"upsample": "transpose", "norm": "batch", "in_channels": 1}),
])
def test_cli_preset_sets_the_network_and_explicit_options_win(tmp_path, preset, expected):
    t1, t2 = tiny_pair()
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    common = ["train", "--model", "pix2pix", "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"), "--planes", "axial",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--ngf", "8", "--ndf", "8", "--depth", "3",
              "--device", "cpu", "--progress", "none"]
    args = [] if preset == "recommended" else ["--preset", preset]  # recommended is the default
    assert main([*common, *args, "--out", str(tmp_path / "a.safetensors")]) == 0
    config = load_model(tmp_path / "a.safetensors").config
    assert {k: config[k] for k in expected} == expected
    assert main([*common, *args, "--norm", "batch", "--context", "1", "--out", str(tmp_path / "b.safetensors")]) == 0
    explicit = load_model(tmp_path / "b.safetensors").config
    assert explicit["norm"] == "batch" and explicit["in_channels"] == 1 and explicit["upsample"] == expected["upsample"]


def test_cli_trains_on_named_series_of_one_dicom_folder(tmp_path):
    import pydicom

    from T1ToT2Lib.io.dicom_write import export_dicom_series

    t1, t2 = tiny_pair()
    uid_t1 = pydicom.dcmread(export_dicom_series(t1, tmp_path / "study" / "t1")[0]).SeriesInstanceUID
    uid_t2 = pydicom.dcmread(export_dicom_series(t2, tmp_path / "study" / "t2")[0]).SeriesInstanceUID
    out = tmp_path / "m.safetensors"
    common = ["train", "--model", "pix2pix", "--t1", str(tmp_path / "study"), "--t2", str(tmp_path / "study"), "--planes", "axial",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--ngf", "8", "--ndf", "8", "--depth", "3",
              "--device", "cpu", "--progress", "none", "--out", str(out)]
    assert main(common) == 2 and not out.exists()  # two series: which one is the T1 must be said
    assert main([*common, "--t1-series-uid", uid_t1, "--t2-series-uid", uid_t2]) == 0
    summary = load_model(out).metadata["training"]
    assert summary["t1"]["shape"] == list(t1.shape) and summary["t2"]["shape"] == list(t2.shape)
    np.testing.assert_allclose(summary["t1"]["spacing_mm"], t1.spacing, atol=1e-5)
