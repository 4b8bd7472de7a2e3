"""The model file: one safetensors file with documented metadata; anything else is refused in one line."""

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.modelfile import FORMAT_VERSION, load_model, read_metadata, save_model

DOCUMENTED_KEYS = {"format", "format_version", "config", "planes", "in_channels", "intensity", "training",
                   "validation_metrics", "t1tot2_version", "created", "synthetic_notice"}


@pytest.fixture
def generator_and_config():
    from T1ToT2Lib import networks

    torch.manual_seed(0)
    config = networks.default_config("pix2pix", in_channels=3, ngf=8, ndf=8, depth=3)
    return networks.build_generator(config), config


def write_model(path, generator, config):
    return save_model(path, generator.state_dict(), {
        "config": config, "planes": ["axial", "coronal"], "in_channels": "3",
        "intensity": {"t1_percentile": 99.5, "t2_scale": 321.5},
        "training": {"epochs": 1, "t1": {"shape": [4, 5, 6]}}, "validation_metrics": {"nrmse": 0.1},
    })


def test_model_file_opens_with_plain_safetensors_and_has_the_documented_keys(tmp_path, generator_and_config):
    generator, config = generator_and_config
    path = write_model(tmp_path / "m.safetensors", generator, config)
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        names = set(handle.keys())
    assert DOCUMENTED_KEYS <= metadata.keys()
    assert metadata["format"] == "t1tot2-model" and metadata["format_version"] == str(FORMAT_VERSION)
    assert json.loads(metadata["config"]) == config
    assert json.loads(metadata["intensity"])["t2_scale"] == 321.5
    assert "not for diagnosis" in metadata["synthetic_notice"]
    assert names == set(generator.state_dict())


def test_load_model_restores_the_weights_in_eval_mode(tmp_path, generator_and_config):
    generator, config = generator_and_config
    path = write_model(tmp_path / "m.safetensors", generator, config)
    loaded = load_model(path)
    assert not loaded.generator.training
    assert loaded.planes == ["axial", "coronal"] and loaded.in_channels == 3 and loaded.t2_scale == 321.5
    for name, tensor in generator.state_dict().items():
        assert torch.equal(loaded.generator.state_dict()[name], tensor), name
    x = torch.rand(2, 3, 16, 16)
    generator.eval()
    with torch.no_grad():
        assert torch.equal(loaded.generator(x), generator(x))
    assert read_metadata(path)["training"]["t1"]["shape"] == [4, 5, 6]


def one_line_error(call) -> str:
    with pytest.raises(T1ToT2Error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and ": " in message
    return message


def test_pickle_renamed_to_safetensors_is_refused(tmp_path, generator_and_config):
    generator, _ = generator_and_config
    path = tmp_path / "pickled.safetensors"
    torch.save(generator.state_dict(), path)
    assert "not a safetensors file" in one_line_error(lambda: load_model(path))


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(struct.pack("<Q", 40) + bytes(range(200)))
    assert "not a safetensors file" in one_line_error(lambda: load_model(path))


def test_safetensors_without_our_format_is_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"hello": "world"})
    assert "not a T1ToT2 model" in one_line_error(lambda: read_metadata(path))


def test_newer_format_version_is_refused(tmp_path, generator_and_config):
    generator, config = generator_and_config
    path = write_model(tmp_path / "m.safetensors", generator, config)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    metadata["format_version"] = str(FORMAT_VERSION + 1)
    save_file(tensors, str(path), metadata=metadata)
    assert "upgrade T1ToT2" in one_line_error(lambda: load_model(path))


def test_missing_file_and_wrong_extension(tmp_path, generator_and_config):
    generator, config = generator_and_config
    assert "does not exist" in one_line_error(lambda: load_model(tmp_path / "absent.safetensors"))
    assert ".safetensors" in one_line_error(lambda: write_model(tmp_path / "m.pt", generator, config))
