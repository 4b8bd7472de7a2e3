"""SIGKILL a real ``t1tot2 train`` and ``t1tot2 synthesize`` at seeded random points and check the files.

A process killed with SIGKILL runs no clean-up at all, so what must hold comes from the writers alone:

* nothing under a final name is ever partial: a model, checkpoint or volume that exists loads completely;
* the last complete training checkpoint survives every kill (files lost: 0) and ``--resume`` continues from it;
* temporary ``.partial`` files a kill leaves are removed by the parent (``BackgroundJob(outputs=...)``).

Kill points are chosen from the child's own progress events (and a few seeded delays), so the tests do not
depend on how fast the machine is.  Each test runs a few short child processes (width-4 network, 2 steps per
epoch) and stays well under a minute on one core.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import T1ToT2Lib
from T1ToT2Lib.networks.modelfile import load_model
from T1ToT2Lib.core.volume import Volume
from T1ToT2Lib.io.files import read_volume, write_volume

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

LIBRARY_ROOT = str(Path(T1ToT2Lib.__file__).resolve().parent.parent)
EPOCHS, STEPS = 4, 2
#: What the tests saw, for the report (``-s`` prints it).
FIGURES = {"training kills": 0, "synthesis kills": 0, "partials removed by the parent": 0, "files lost": 0}


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = LIBRARY_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


def pair(shape=(6, 26, 28), seed=0):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(k**2 + j**2 + i**2)
    t1 = 100.0 * (r < 0.8) + 12.0 * ((r >= 0.8) & (r < 1.0)) + rng.normal(0, 2, shape)
    t2 = 40.0 * (r < 0.8) + 150.0 * ((r >= 0.8) & (r < 1.0)) + rng.normal(0, 2, shape)
    a = Volume.from_geometry(np.abs(t1), spacing=(0.9, 1.1, 2.0), origin=(3.0, -4.0, 5.0))
    return a, a.with_array(np.abs(t2))


def partials(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if ".partial" in p.name)


def kill_after_events(argv, n_events: int, delay: float = 0.0, cwd=None):
    """Run ``t1tot2 ARGV``, SIGKILL it after its ``n_events``-th JSON line (+ ``delay`` s); returns (code, events)."""
    proc = subprocess.Popen([sys.executable, "-m", "T1ToT2Lib.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=child_env(), cwd=cwd)
    events = []
    for line in proc.stdout:
        if line.startswith("{"):
            events.append(json.loads(line))
            if len(events) >= n_events:
                break
    if delay:
        time.sleep(delay)
    proc.kill()
    proc.stdout.close()
    return proc.wait(), events


# --------------------------------------------------------------------------- training
def checkpoint_epoch(path: Path):
    """The epoch a complete checkpoint holds; raises if the file is partial or damaged."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        epoch = int(handle.metadata()["epoch"])
    assert load_file(str(path)), "a checkpoint with no tensors"
    return epoch


def test_sigkill_during_training_keeps_the_last_checkpoint_and_resume_continues(tmp_path):
    t1, t2 = pair()
    write_volume(t1, tmp_path / "t1.nii.gz")
    write_volume(t2, tmp_path / "t2.nii.gz")
    out = tmp_path / "model.safetensors"
    checkpoint = tmp_path / "ckpt" / "checkpoint.safetensors"
    argv = ["train", "--t1", tmp_path / "t1.nii.gz", "--t2", tmp_path / "t2.nii.gz", "--out", out,
            "--checkpoint-dir", tmp_path / "ckpt", "--model", "pix2pix", "--preset", "paper", "--ngf", "4", "--ndf", "4",
            "--planes", "axial", "--epochs", str(EPOCHS), "--lr", "2e-4", "--batch-size", "1",
            "--max-steps-per-epoch", str(STEPS), "--device", "cpu", "--seed", "0", "--progress", "json"]
    rng = np.random.default_rng(20261130)
    last_epoch, resumed = 0, 0
    for round_ in range(4):
        if last_epoch == EPOCHS:
            # The kill landed after the last epoch's checkpoint (the delay can carry it there): that run is done;
            # the next rounds kill a new one.
            shutil.rmtree(checkpoint.parent)
            out.unlink(missing_ok=True)
            last_epoch = 0
        resume = checkpoint.exists()
        # Events of a run from epoch e: start, then per epoch STEPS steps and an epoch event, then done.
        remaining = 1 + (EPOCHS - last_epoch) * (STEPS + 1)
        n_events = int(rng.integers(1, remaining))  # never the final 'done'
        delay = float(rng.uniform(0.0, 0.05)) if round_ % 2 else 0.0  # sometimes inside a checkpoint write
        code, events = kill_after_events(argv + (["--resume"] if resume else []), n_events, delay)
        if code == -signal.SIGKILL:
            FIGURES["training kills"] += 1
        if resume:
            resumed += 1
            assert events[0]["event"] == "start" and events[0]["start_epoch"] == last_epoch + 1, events[0]
        # Nothing partial under a final name; the last complete checkpoint is still there and loads.
        if checkpoint.exists():
            epoch = checkpoint_epoch(checkpoint)
            if epoch < last_epoch:
                FIGURES["files lost"] += 1
            assert epoch >= last_epoch, f"checkpoint went back from epoch {last_epoch} to {epoch}"
            last_epoch = epoch
        elif last_epoch:
            FIGURES["files lost"] += 1
            pytest.fail(f"the checkpoint of epoch {last_epoch} disappeared")
        if out.exists():
            load_model(out)  # complete, or it would not load
    assert FIGURES["training kills"] >= 3

    # --resume continues from the last complete checkpoint to the end.
    final = subprocess.run([sys.executable, "-m", "T1ToT2Lib.cli", *map(str, argv), *(["--resume"] if checkpoint.exists() else [])],
                           capture_output=True, text=True, env=child_env(), timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]
    events = [json.loads(line) for line in final.stdout.splitlines() if line.startswith("{")]
    assert events[0]["event"] == "start" and events[0]["start_epoch"] == last_epoch + 1
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == list(range(last_epoch + 1, EPOCHS + 1))
    assert checkpoint_epoch(checkpoint) == EPOCHS
    model = load_model(out)
    assert model.config["arch"] == "pix2pix" and model.config["ngf"] == 4
    # What the kills left behind is exactly what a parent's clean-up of these outputs finds and removes.
    from T1ToT2Lib.core.atomic import partial_paths, remove_partials

    known = set(partial_paths(out)) | set(partial_paths(checkpoint))
    assert set(partials(tmp_path)) <= known
    for final_path in (out, checkpoint):
        FIGURES["partials removed by the parent"] += len(remove_partials(final_path))
    assert partials(tmp_path) == []
    assert resumed >= 1, "no round resumed from a checkpoint: change the seed"


# --------------------------------------------------------------------------- synthesis
@pytest.fixture(scope="module")
def synthesis_inputs(tmp_path_factory):
    from T1ToT2Lib.research.analysis import save_lookup_model

    root = tmp_path_factory.mktemp("synth")
    t1, t2 = pair(shape=(40, 72, 80), seed=1)
    write_volume(t1, root / "t1.nii.gz")
    save_lookup_model(root / "lookup.safetensors", t1, t2, bins=64)
    return root, t1


def check_output(out: Path, t1: Volume):
    """The output is absent, or complete: it reads and has the T1's exact geometry."""
    if out.exists():
        written = read_volume(out)
        assert written.same_geometry(t1, tol=1e-5)
        assert np.isfinite(written.array).all()


def test_sigkill_during_synthesis_leaves_no_partial_final_file(synthesis_inputs, tmp_path):
    root, t1 = synthesis_inputs
    rng = np.random.default_rng(7)
    # JSON events of a whole run: one per batch of 8 slices of each of the three planes, then 'done'.
    events_per_run = 1 + -(-t1.shape[0] // 8) + -(-t1.shape[1] // 8) + -(-t1.shape[2] // 8)
    for round_ in range(4):
        out = tmp_path / f"syn{round_}.nii.gz"
        argv = ["synthesize", root / "lookup.safetensors", root / "t1.nii.gz", out, "--plane", "fuse", "--batch", "8",
                "--device", "cpu", "--engine", "torch", "--progress", "json"]
        # The last two rounds are killed after the last slice event: during (or just after) the write.
        n_events = int(rng.integers(1, events_per_run)) if round_ < 2 else events_per_run - 1
        delay = float(rng.uniform(0.0, 0.2)) if round_ >= 2 else 0.0
        code, _ = kill_after_events(argv, n_events, delay)
        FIGURES["synthesis kills"] += code == -signal.SIGKILL
        check_output(out, t1)
        for leftover in partials(tmp_path):  # SIGKILL may leave one: never under the final name
            assert leftover.name != out.name and leftover.name.startswith(f".{out.name.split('.')[0]}.")
            leftover.unlink()
    assert FIGURES["synthesis kills"] >= 3


def test_a_killed_synthesis_job_has_its_partial_files_removed_by_the_parent(synthesis_inputs, tmp_path):
    """BackgroundJob(outputs=[...]): when the real child dies by SIGKILL, the parent removes its temporary files."""
    import psutil

    from T1ToT2Lib.slicer.jobs import BackgroundJob, cli_command

    root, t1 = synthesis_inputs
    out = tmp_path / "syn.nii.gz"
    # A child that is stopped (SIGSTOP) inside its atomic write, so the kill lands there for certain.
    script = tmp_path / "stuck_writer.py"
    script.write_text(
        "import os, signal, sys\n"
        "from T1ToT2Lib.core.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    open(tmp, 'wb').write(b'half a volume')\n"
        "    print('{\"event\": \"writing\"}', flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    job = BackgroundJob([sys.executable, str(script), str(out)], env=child_env(), cwd=tmp_path, outputs=[out]).start()
    deadline = time.monotonic() + 120
    while not any(e.get("event") == "writing" for e in job.events) and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.05)
    assert len(partials(tmp_path)) == 1  # the half-written temporary file is there...
    os.kill(job.process.pid, signal.SIGKILL)
    assert job.wait(60) == -signal.SIGKILL
    assert partials(tmp_path) == [] and not out.exists()  # ...and the parent removed it
    FIGURES["partials removed by the parent"] += 1

    # The real synthesis under BackgroundJob, its Python child killed at random slice events.
    rng = np.random.default_rng(11)
    for round_ in range(2):
        target = tmp_path / f"job{round_}.nii.gz"
        job = BackgroundJob(cli_command("synthesize", root / "lookup.safetensors", root / "t1.nii.gz", target,
                                        "--plane", "fuse", "--batch", "8", "--device", "cpu", "--engine", "torch",
                                        "--progress", "json"), env=child_env(), cwd=tmp_path, outputs=[target]).start()
        wanted = int(rng.integers(1, 10))
        deadline = time.monotonic() + 120
        while sum(e.get("event") == "slices" for e in job.events) < wanted and job.is_running and time.monotonic() < deadline:
            job.poll()
            time.sleep(0.01)
        for proc in reversed(job.tree_processes()):
            try:
                proc.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        code = job.wait(60)
        FIGURES["synthesis kills"] += code not in (0, None)
        check_output(target, t1)
        assert partials(tmp_path) == []


def test_report_figures(capsys):
    with capsys.disabled():
        print(f"\ncrash-safety figures: {FIGURES}")
    assert FIGURES["files lost"] == 0
