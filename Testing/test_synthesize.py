"""Synthesis keeps the input geometry exactly, slices along the asked plane, and labels its output synthetic."""

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import oblique_direction
from scipy.spatial.transform import Rotation
from test_train import TINY_NET, tiny_pair

from T1ToT2Lib.cli import main
from T1ToT2Lib.inference.slices import foreground_scale
from T1ToT2Lib.core.devices import autocast_context, resolve_device, run_with_oom_fallback
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.modelfile import LoadedModel, load_model
from T1ToT2Lib.inference.synthesize import synthesize_file, synthesize_volume
from T1ToT2Lib.training.train import TrainConfig, train
from T1ToT2Lib.core.volume import PLANES, Volume
from T1ToT2Lib.io.files import read_volume, write_volume

SPACING = (0.7, 1.3, 2.9)  # anisotropic, i/j/k all different


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    t1, t2 = tiny_pair()
    config = TrainConfig(t1=t1, t2=t2, out=folder / "tiny.safetensors", network=TINY_NET, planes=PLANES,
                         epochs=1, max_steps_per_epoch=4, device="cpu", seed=1)
    return train(config)


@pytest.fixture
def oblique_t1():
    t1, _ = tiny_pair(shape=(20, 26, 30), seed=5, spacing=SPACING, direction=oblique_direction())
    return t1


@pytest.mark.parametrize("plane", [*PLANES, "fuse"])
def test_output_keeps_the_oblique_anisotropic_geometry(model_path, oblique_t1, plane, tmp_path):
    out = synthesize_volume(model_path, oblique_t1, plane=plane, device="cpu")
    assert out.shape == oblique_t1.shape
    np.testing.assert_allclose(out.ijk_to_ras, oblique_t1.ijk_to_ras, atol=1e-9, rtol=0)
    assert out.meta["synthetic"] is True
    assert np.isfinite(out.array).all() and out.array.min() >= 0 and out.array.max() > 0

    path = synthesize_file(model_path, write_volume(oblique_t1, tmp_path / "t1.nii.gz"), tmp_path / "t2.nii.gz", plane=plane, device="cpu")
    back = read_volume(path)
    np.testing.assert_allclose(back.ijk_to_ras, oblique_t1.ijk_to_ras, atol=1e-5, rtol=0)
    # The T1 (0.7/1.3/2.9 mm) is resampled to the model's training voxel size and back; the file stores its
    # geometry in float32, which moves those sample points by ~1e-6 mm and the interpolated values by ~1e-5.
    np.testing.assert_allclose(back.array, out.array, rtol=1e-5, atol=1e-4)


class ShapeRecorder(torch.nn.Module):
    """An identity "generator" (centre channel) that records the slice sizes it is given."""

    def __init__(self):
        super().__init__()
        self.sizes = set()

    def forward(self, x):
        self.sizes.add(tuple(x.shape[-2:]))
        return x[:, x.shape[1] // 2: x.shape[1] // 2 + 1]


def recorder_model(in_channels=1, t2_scale=250.0):
    return LoadedModel(generator=ShapeRecorder(), config={}, metadata={}, planes=list(PLANES), in_channels=in_channels,
                       t2_scale=t2_scale, t1_percentile=99.5, multiple=1, name="recorder")


def test_plane_selects_the_axis_from_the_direction_matrix():
    # I points superior, J right, K anterior (slightly rotated): axial slices are i-slices, array axis 2.
    permuted = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)
    direction = Rotation.from_euler("z", 12, degrees=True).as_matrix() @ permuted
    t1, _ = tiny_pair(shape=(20, 26, 30), spacing=SPACING, direction=direction)
    expected_axis = {"axial": 2, "coronal": 0, "sagittal": 1}
    for plane, axis in expected_axis.items():
        model = recorder_model()
        out = synthesize_volume(model, t1, plane=plane, device="cpu", batch_size=7)
        assert model.generator.sizes == {tuple(s for a, s in enumerate(t1.shape) if a != axis)}, plane
        # With an identity generator the output is the normalised T1 mapped to the model's T2 scale.
        expected = np.maximum(t1.array / foreground_scale(t1.array), 0) * 250.0
        np.testing.assert_allclose(out.array, expected, rtol=1e-5, atol=1e-4)


def test_bf16_stays_within_two_percent_of_fp32(model_path, oblique_t1):
    fp32 = synthesize_volume(model_path, oblique_t1, plane="axial", device="cpu", precision="fp32").array
    bf16 = synthesize_volume(model_path, oblique_t1, plane="axial", device="cpu", precision="bf16").array
    relative_rms = np.sqrt(np.mean((bf16 - fp32) ** 2)) / np.sqrt(np.mean(fp32 ** 2))
    assert relative_rms < 0.02, relative_rms
    assert not np.array_equal(bf16, fp32), "bf16 should really run in reduced precision"


def test_file_is_labelled_synthetic(model_path, oblique_t1, tmp_path):
    for name in ("t2.nii.gz", "t2.nrrd"):
        path = synthesize_file(model_path, write_volume(oblique_t1, tmp_path / "t1.nii.gz"), tmp_path / name, device="cpu")
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        keys = reader.GetMetaDataKeys()
        if name.endswith(".nii.gz"):
            assert reader.GetMetaData("descrip").startswith("SYNTHETIC T2 by T1ToT2")
        else:
            assert "T1ToT2_synthetic" in keys and reader.GetMetaData("T1ToT2_synthetic") == "true"


def test_cli_synthesize_json_and_missing_model(model_path, oblique_t1, tmp_path, capsys):
    t1_path = write_volume(oblique_t1, tmp_path / "t1.nii.gz")
    out = tmp_path / "syn.nii.gz"
    assert main(["synthesize", str(model_path), str(t1_path), str(out), "--plane", "coronal", "--device", "cpu",
                 "--progress", "json", "--batch", "4"]) == 0
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.out.splitlines()]
    # The network runs on the T1 resampled to the model's training voxel size (T1ToT2Lib.inference.preprocess), so the
    # slice count is that grid's; the output is back on the T1's own grid.
    from T1ToT2Lib.networks.modelfile import load_model as _load
    from T1ToT2Lib.inference.preprocess import prepare_input

    prepared = prepare_input(oblique_t1, _load(model_path))
    network_grid = prepared.volume if prepared is not None else oblique_t1
    expected = network_grid.shape[network_grid.plane_axis("coronal")]
    capsys.readouterr()  # prepare_input repeats its resampling note on stderr
    assert events[-1]["event"] == "done" and events[-2]["done"] == events[-2]["total"] == expected
    # The resampling note travels in the "done" event (for the Slicer panel) as well as on stderr: the model was
    # trained at (1.0, 1.2, 2.0) mm and this T1 is (0.7, 1.3, 2.9) mm, |2.9 / 2.0 - 1| = 45% along k.
    (note,) = events[-1]["notes"]
    assert "45%" in note and note == prepared.volume.meta["notes"][0]
    assert f"note: {note}" in captured.err
    assert read_volume(out).shape == oblique_t1.shape
    assert read_volume(out).same_geometry(oblique_t1, tol=1e-5)

    code = main(["synthesize", str(tmp_path / "absent.safetensors"), str(t1_path), str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err
    assert not (tmp_path / "x.nii.gz").exists()


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(T1ToT2Error, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_fp16_on_cpu_falls_back_to_bf16():
    messages = []
    with autocast_context(torch.device("cpu"), "fp16", warn=messages.append):
        y = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert y.dtype == torch.bfloat16 and "bf16" in messages[0]


def test_out_of_memory_on_the_gpu_retries_on_the_cpu():
    tried, messages = [], []

    def work(device):
        tried.append(device.type)
        if device.type == "cuda":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return "done"

    assert run_with_oom_fallback(work, torch.device("cuda"), warn=messages.append) == "done"
    assert tried == ["cuda", "cpu"] and "CPU" in messages[0]
    with pytest.raises(ValueError):
        run_with_oom_fallback(lambda d: (_ for _ in ()).throw(ValueError("other")), torch.device("cuda"))


def test_bad_arguments_are_one_line_errors(model_path, oblique_t1):
    with pytest.raises(T1ToT2Error, match="needs a Volume"):
        synthesize_volume(model_path, np.zeros((4, 4, 4)))
    with pytest.raises(T1ToT2Error, match="unknown plane"):
        synthesize_volume(model_path, oblique_t1, plane="oblique")
    with pytest.raises(T1ToT2Error, match="batch size"):
        synthesize_volume(model_path, oblique_t1, batch_size=0)


def test_batch_norm_uses_each_slices_own_statistics(model_path, oblique_t1):
    model = load_model(model_path)
    before = {k: v.clone() for k, v in model.generator.state_dict().items()}
    one = synthesize_volume(model, oblique_t1, plane="sagittal", device="cpu", batch_size=1).array
    many = synthesize_volume(model, oblique_t1, plane="sagittal", device="cpu", batch_size=7).array
    running = synthesize_volume(model, oblique_t1, plane="sagittal", device="cpu", batch_norm="running").array
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-4 * one.max())  # slices do not share statistics
    assert np.abs(running - one).max() > 1e-3 * one.max()  # the mode really changes the normalisation
    after = model.generator.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running statistics untouched
    with pytest.raises(T1ToT2Error, match="batch-norm"):
        synthesize_volume(model, oblique_t1, batch_norm="train")


def test_cli_default_plane_fuses_a_model_trained_on_all_planes(model_path, oblique_t1, tmp_path, capsys):
    from T1ToT2Lib.research.analysis import save_lookup_model
    from T1ToT2Lib.inference.synthesize import default_plane

    assert load_model(model_path).planes == list(PLANES)
    assert default_plane(load_model(model_path)) == "fuse"
    lookup = save_lookup_model(tmp_path / "lookup.safetensors", *tiny_pair(), bins=16, plane="coronal")
    assert default_plane(load_model(lookup)) == "coronal"

    t1_path = write_volume(oblique_t1, tmp_path / "t1.nii.gz")
    assert main(["synthesize", str(model_path), str(t1_path), str(tmp_path / "auto.nii.gz"), "--device", "cpu",
                 "--progress", "none"]) == 0
    fused = synthesize_volume(model_path, oblique_t1, plane="fuse", device="cpu")
    np.testing.assert_allclose(read_volume(tmp_path / "auto.nii.gz").array, fused.array, rtol=1e-5, atol=1e-4)


def test_cli_synthesizes_the_named_series_of_a_multi_series_dicom_folder(model_path, oblique_t1, tmp_path, capsys):
    import pydicom

    from T1ToT2Lib.io.dicom_write import export_dicom_series

    folder = tmp_path / "study"
    t1_files = export_dicom_series(oblique_t1, folder / "t1")
    export_dicom_series(oblique_t1.with_array(oblique_t1.array * 2), folder / "other")
    t1_uid = pydicom.dcmread(t1_files[0]).SeriesInstanceUID

    out = tmp_path / "syn.nii.gz"
    assert main(["synthesize", str(model_path), str(folder), str(out), "--device", "cpu", "--progress", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and t1_uid in err and not out.exists()

    assert main(["synthesize", str(model_path), str(folder), str(out), "--series-uid", t1_uid, "--device", "cpu",
                 "--progress", "none"]) == 0
    written = read_volume(out)
    np.testing.assert_allclose(written.ijk_to_ras, read_volume(folder / "t1").ijk_to_ras, atol=1e-5)
    np.testing.assert_allclose(written.ijk_to_ras, oblique_t1.ijk_to_ras, atol=1e-4)


def test_synthesis_holds_few_volume_sized_arrays_beside_the_input():
    """Working memory of a whole-volume synthesis, traced (numpy reports its buffers to tracemalloc): the normalised
    copy and the output, plus foreground_scale's transient copy of the foreground, and no more.  Scaling the output
    into a new array and clipping it into another (two more volumes at the end) would exceed the bound."""
    import tracemalloc


    t1 = Volume.from_geometry(np.random.default_rng(0).random((64, 64, 64), dtype=np.float32) * 100 + 1, SPACING)
    model = recorder_model()
    synthesize_volume(model, t1, plane="axial", device="cpu")  # imports and first-call caches outside the trace
    tracemalloc.start()
    try:
        synthetic = synthesize_volume(model, t1, plane="axial", device="cpu")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert synthetic.array.shape == t1.shape
    assert peak < 3.2 * t1.array.nbytes, peak / t1.array.nbytes
