"""What users wait for: the recommended model trained and run on a phantom hand, per stage, each in a fresh process.

The phantom (``full``: the paper's 0.6 mm hand, 491 x 76 x 223) is rendered once into the bench's work
folder and reused.  Training (recommended refiner on the left hand) and synthesis (that model on the right
hand, three planes fused, with the error map, written as NIfTI) each run in a child started from a new
interpreter, so its peak memory is its own (see :func:`T1ToT2Lib.research.bench.peak_rss_gb`).  Stages are
timed from the jobs' own progress events: nothing is re-run to time it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: ``quick_training``: one epoch of a few steps; ``crop``: only that many middle slices of each hand (along the
#: first array axis), so a test drives the whole bench in seconds.
PRODUCT_PRESETS = {
    "smoke": {"size": "small", "quick_training": True, "crop": 40},
    "quick": {"size": "full", "quick_training": False},
    "full": {"size": "full", "quick_training": False},
}


_NAMES = [f"{side}_{kind}.nii.gz" for side in ("left", "right") for kind in ("t1", "t2")]


def phantom_folder(work, size: str, emit=lambda message: None, crop: int | None = None) -> Path:
    """The phantom of ``size`` (seed 0) in ``work``, rendered on first use; with ``crop``, a copy of its
    ``crop`` middle slices along the first array axis (geometry kept by SimpleITK's slicing)."""
    from ..phantom.render import write_phantom

    folder = Path(work) / f"phantom-{size}-seed0"
    if not all((folder / name).exists() for name in _NAMES):
        emit(f"product: rendering the {size} phantom into {folder} (once)")
        write_phantom(folder, size=size, seed=0)
    if not crop:
        return folder
    import SimpleITK as sitk

    cropped = Path(work) / f"phantom-{size}-seed0-middle{int(crop)}"
    cropped.mkdir(parents=True, exist_ok=True)
    for name in _NAMES:
        if not (cropped / name).exists():
            image = sitk.ReadImage(str(folder / name))
            k0 = max(0, (image.GetSize()[2] - int(crop)) // 2)
            sitk.WriteImage(image[:, :, k0:k0 + int(crop)], str(cropped / name))
    return cropped


def run_child(task: str, spec: dict) -> dict:
    """``task`` of :data:`T1ToT2Lib.research.bench.CHILD_TASKS` in a new interpreter; its JSON result
    (or ``{"error": last line of its stderr}``)."""
    package_parent = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([package_parent] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    result = subprocess.run([sys.executable, "-m", "T1ToT2Lib.research.bench", "--child", task, json.dumps(spec)],
                            capture_output=True, text=True, env=env)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        return {"error": (result.stderr.strip().splitlines() or ["child failed"])[-1]}
    return json.loads(lines[-1])


def peak_rss_gb() -> float:
    """This process's own peak resident memory in GiB.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own address space,
    which a new program starts afresh.  ``getrusage``'s ``ru_maxrss`` would not do in a child: Linux carries
    the high-water mark of the process that called ``exec`` into it, so a child started (fork, vfork or
    posix_spawn, then exec) from a 5 GB parent reports at least 5 GB.  Windows: psutil's ``peak_wset``.
    Elsewhere (macOS) ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    try:
        import resource  # POSIX only: imported here so the library imports on Windows
    except ImportError:
        import psutil

        info = psutil.Process().memory_info()
        return getattr(info, "peak_wset", info.rss) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)  # bytes on macOS, KiB on Linux


def allocate_child(spec: dict) -> dict:
    """Allocate and touch ``spec['mib']`` MiB, report the peak: the probe's own check."""
    before = peak_rss_gb()
    block = np.ones(int(spec["mib"]) * 2**20 // 8)
    block[::512] += 1.0
    return {"rss_after_imports_gb": before, "peak_rss_gb": peak_rss_gb(), "checksum": float(block[:4].sum())}


class _Clock:
    """Progress events with the time they arrived (seconds since the clock started)."""

    def __init__(self):
        self.start, self.events = time.perf_counter(), []

    def __call__(self, event):
        self.events.append((time.perf_counter() - self.start, event))

    def first(self, predicate, default=None):
        return next((t for t, e in self.events if isinstance(e, dict) and predicate(e)), default)

    def last(self, predicate, default=None):
        return next((t for t, e in reversed(self.events) if isinstance(e, dict) and predicate(e)), default)


def _cpu():
    times = os.times()
    return times.user + times.system


def synthesis_child(spec: dict) -> dict:
    """Synthesise the right hand with the model (fuse, error map), write both volumes; seconds per stage."""
    from ..core.volume import PLANES
    from ..inference.synthesize import synthesize_volume, write_synthetic_volume
    from ..io.files import read_volume
    from ..networks.modelfile import load_model

    rss_after_imports = peak_rss_gb()
    started = time.perf_counter()
    loaded = load_model(spec["model"], device="cpu")
    t1 = read_volume(spec["t1"])
    load_s = time.perf_counter() - started
    clock, cpu0 = _Clock(), _cpu()
    synthetic, error = synthesize_volume(loaded, t1, plane="fuse", device=spec.get("device", "cpu"),
                                         precision=spec.get("precision", "fp32"), uncertainty=True, progress=clock)
    synthesis_s = time.perf_counter() - clock.start
    t0 = time.perf_counter()
    write_synthetic_volume(synthetic, Path(spec["out"]) / "synthetic_t2.nii.gz")
    write_synthetic_volume(error, Path(spec["out"]) / "error_map.nii.gz")
    writing_s = time.perf_counter() - t0
    stages = {"read model and T1": load_s}
    prior_start = clock.first(lambda e: e.get("stage") == "prior", 0.0)
    cnn_start = clock.first(lambda e: e.get("stage") == "slices", prior_start)
    stages["prepare"] = prior_start
    timings = getattr(loaded.prior, "timings", None) or {}
    stages["features"] = timings.get("features_s")
    stages["trees"] = timings.get("trees_s")
    stages["error map (error trees)"] = timings.get("error_trees_s")
    stages["prior stage, all"] = cnn_start - prior_start
    boundary, previous = 0, cnn_start
    for plane in PLANES:
        boundary += t1.shape[t1.plane_axis(plane)]
        end = clock.first(lambda e, b=boundary: e.get("stage") == "slices" and e.get("done", 0) >= b, previous)
        stages[f"CNN {plane}"], previous = end - previous, end
    stages["fusion and error map"] = synthesis_s - previous
    stages["writing"] = writing_s
    return {"shape": list(t1.shape), "spacing_mm": [round(float(s), 3) for s in t1.spacing], "seconds": synthesis_s + writing_s,
            "stages_s": stages, "cpu_s": _cpu() - cpu0, "peak_rss_gb": peak_rss_gb(), "rss_after_imports_gb": rss_after_imports,
            "tree_engine": _tree_engine(loaded.prior)}


def _tree_engine(prior) -> str:
    cache = getattr(getattr(prior, "trees", None), "_cache", {})
    return "onnxruntime" if cache.get("onnxruntime") is not None else "sklearn" if cache.get("sklearn") else "numpy"


def train_child(spec: dict) -> dict:
    """Train the recommended refiner on the left hand; seconds per stage from its progress events."""
    from ..training.presets import training_defaults
    from ..training.train import TrainConfig, train

    rss_after_imports = peak_rss_gb()
    defaults = training_defaults("refiner")
    steps = spec.get("cnn_steps") or (2 if spec.get("quick_training") else None)
    if steps:  # a cut, said so in the table: the CNN for 1 epoch of ``steps`` steps (trained even on one pair alone)
        defaults.update(epochs=1, epochs_decay=0, correction="train")
    if spec.get("quick_training"):  # and for tests 10 trees per fit
        from ..networks import feature_regression

        feature_regression.DEFAULT_FIT = {**feature_regression.DEFAULT_FIT, "max_iter": 10}
    config = TrainConfig(t1=spec["t1"], t2=spec["t2"], out=spec["model"], model="refiner", device=spec.get("device", "cpu"),
                         precision=spec.get("precision", "fp32"), max_steps_per_epoch=steps,
                         **defaults)
    clock, cpu0 = _Clock(), _cpu()
    train(config, progress=clock)
    total = time.perf_counter() - clock.start
    fitted = [(t, e) for t, e in clock.events if isinstance(e, dict) and e.get("event") == "prior" and "seconds" in e]
    prior_at, prior_s = (fitted[0][0], float(fitted[0][1]["seconds"])) if fitted else (0.0, 0.0)
    last_epoch = clock.last(lambda e: e.get("event") == "epoch", prior_at)
    stages = {"read, checks, set-up": prior_at - prior_s, "trees (features, fit, out-of-fold prior, error trees)": prior_s,
              "CNN epochs": last_epoch - prior_at, "gate, writing the model": total - last_epoch}
    return {"seconds": total, "stages_s": stages, "cpu_s": _cpu() - cpu0, "peak_rss_gb": peak_rss_gb(),
            "rss_after_imports_gb": rss_after_imports, "epochs": sum(1 for _, e in clock.events if isinstance(e, dict) and e.get("event") == "epoch")}


def run_product(work, preset: str = "full", size: str | None = None, device: str = "cpu", precision: str = "fp32",
                emit=lambda message: None, cnn_steps: int | None = None) -> dict:
    """Train, then synthesise, each in a fresh process; the results of both.  ``cnn_steps``: train the CNN for
    one epoch of that many steps only (the trees in full; synthesis costs the same with any weights)."""
    cfg = {**PRODUCT_PRESETS[preset], **({"size": size} if size else {})}
    folder = phantom_folder(work, cfg["size"], emit, cfg.get("crop"))
    out = Path(work) / f"product-{folder.name}"
    out.mkdir(parents=True, exist_ok=True)
    model = out / "refiner.safetensors"
    common = {"device": device, "precision": precision}
    emit(f"product: training the recommended refiner on the {cfg['size']} left hand (fresh process)")
    train = run_child("product_train", {**common, "t1": str(folder / "left_t1.nii.gz"), "t2": str(folder / "left_t2.nii.gz"),
                                        "model": str(model), "quick_training": cfg["quick_training"],
                                        "cnn_steps": cnn_steps})
    if "error" in train:
        return {"size": cfg["size"], "phantom": folder.name, "train": train, "synthesis": {"error": "no model: training failed"}}
    emit(f"product: synthesising the {cfg['size']} right hand, fuse + error map (fresh process)")
    synthesis = run_child("product_synthesis", {**common, "model": str(model), "t1": str(folder / "right_t1.nii.gz"), "out": str(out)})
    return {"size": cfg["size"], "phantom": folder.name, "quick_training": cfg["quick_training"], "cnn_steps": cnn_steps,
            "train": train, "synthesis": synthesis}
