"""Distributed training under torchrun: two CPU processes on gloo agree, and rank 0 alone writes the model."""

import hashlib
import os
import socket
import subprocess
import sys

from test_train import tiny_pair

from T1ToT2Lib.networks.modelfile import load_model
from T1ToT2Lib.training.train import DEBUG_HASH_ENV
from T1ToT2Lib.io.files import write_volume


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights_hash(state_dict) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_two_process_gloo_training_writes_one_model_with_identical_weights(tmp_path):
    t1, t2 = tiny_pair()
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    out_dir = tmp_path / "out"
    env = {**os.environ, DEBUG_HASH_ENV: str(tmp_path / "hashes"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "-m", "T1ToT2Lib.cli", "train", "--model", "pix2pix",
        "--t1", str(tmp_path / "t1.nii.gz"), "--t2", str(tmp_path / "t2.nii.gz"), "--planes", "axial,sagittal",
        "--epochs", "1", "--max-steps-per-epoch", "3", "--ngf", "8", "--ndf", "8", "--depth", "3",
        "--device", "cpu", "--out", str(out_dir / "m.safetensors"), "--progress", "json",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    assert sorted(p.name for p in out_dir.iterdir()) == ["m.checkpoints", "m.safetensors"]
    assert [p.name for p in (out_dir / "m.checkpoints").iterdir()] == ["checkpoint.safetensors"]
    starts = [line for line in result.stdout.splitlines() if '"event": "start"' in line]
    assert len(starts) == 1 and '"world_size": 2' in starts[0]  # only rank 0 reports

    hashes = {p.name: p.read_text() for p in (tmp_path / "hashes").iterdir()}
    assert set(hashes) == {"rank0.sha256", "rank1.sha256"}
    assert hashes["rank0.sha256"] == hashes["rank1.sha256"]
    saved = load_model(out_dir / "m.safetensors")
    assert weights_hash(saved.generator.state_dict()) == hashes["rank0.sha256"]
    assert saved.metadata["training"]["world_size"] == 2
