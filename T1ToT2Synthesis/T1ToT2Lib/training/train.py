"""Training a T1 -> T2 translator (Pix2Pix, CycleGAN or UNIT) on paired slices.

One step follows the reference implementation's order: the generator makes a
fake T2, the discriminator(s) take an Adam step, then the generator(s) do.
:class:`~T1ToT2Lib.networks.GANModel` runs each phase as
``forward(phase, real_a, real_b) -> (loss, logs)``, which also makes the model
a single module that ``DistributedDataParallel`` can wrap.

After every epoch a checkpoint is written atomically: all weights, the Adam
states, the RNG states, CycleGAN's image pools and the loss history, so ``resume`` continues exactly
where the run stopped (on the CPU, bit-identical to an uninterrupted run).
The model file (:mod:`T1ToT2Lib.networks.modelfile`) is written only when training
finishes; a cancelled run leaves the last complete checkpoint and no model.

Under ``torchrun`` (``WORLD_SIZE`` > 1) each process trains on its share of
the batches, gradients are averaged by DDP, and rank 0 alone writes files.
"""

from __future__ import annotations

import csv
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import sequence
from ..core.atomic import atomic_path
from ..inference.slices import check_context
from .data import PairsDataset, SliceDataset, check_paired, check_planes
from .presets import CORRECTIONS, N4_MODES, correction_trains
from ..core.errors import T1ToT2Error
from ..core.volume import PLANES, Volume, check_image
from ..io.files import read_volume

CHECKPOINT_NAME = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "t1tot2-checkpoint"
#: Phantom subjects rendered for training start at this seed (plus the run's seed), away from the seeds the demo and
#: the robustness matrix score (0, 1, 2...), so no training subject shares their anatomy.
PHANTOM_SEED_OFFSET = 1000
#: When set, every rank writes a hash of its final generator weights into this folder (used by the DDP test).
DEBUG_HASH_ENV = "T1TOT2_DEBUG_WEIGHT_HASH_DIR"


class TrainingCancelled(T1ToT2Error):
    """Raised by :func:`train` when its cancel event is set; the last checkpoint stays on disk."""


@dataclass
class TrainConfig:
    t1: object  # path or Volume
    t2: object
    out: object = "model.safetensors"
    val_t1: object = None
    val_t2: object = None
    model: str = "pix2pix"
    network: dict = field(default_factory=dict)  # overrides for networks.default_config
    planes: tuple = PLANES
    epochs: int = 15  # at constant learning rate (the paper: 15 epochs at 2e-4)
    epochs_decay: int = 0  # further epochs with the rate falling linearly to 0 (the reference's n_epochs_decay)
    lr: float = 2e-4
    betas: tuple = (0.5, 0.999)
    batch_size: int = 1
    context: int = 1  # slices fed as channels: 1 = 2-D, 3 = 2.5-D with one neighbour each side
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    checkpoint_dir: object = None  # default: <out stem>.checkpoints next to the model
    resume: bool = False
    max_steps_per_epoch: int | None = None
    loss_csv: object = None
    augment: bool = False
    patch: int | None = None  # train on random patches of this size centred on the object (None: whole slices)
    prior_cross_fit: bool = True  # refiner: train on an out-of-fold prior (True) or the final trees' own prediction
    percentile: float | None = None  # foreground percentile of the normalisation (None: presets.normalisation_percentile)
    pairs: tuple = ()  # further (t1, t2) pairs (paths or Volumes), each on its own grid; refiner only
    phantom_subjects: int = 0  # phantom subjects rendered on the fly (both hands train; one more subject is held out)
    randomize: bool = False  # phantom subjects with randomized acquisitions
    phantom_ranges: dict | None = None  # overrides of T1ToT2Lib.phantom.render.RANDOM_RANGES
    augment_copies: int = 0  # augmented copies of every pair's T1 (intensity, coil field, noise, blur)
    voxel_mm: tuple | None = None  # common voxel size every pair is resampled to (default: the first T1's)
    prior_stages: int = 1  # refiner: 1 = the trees on T1 features; 2 = plus the auto-context stage
    correction: str = "train"  # refiner's CNN: "train"; "auto" (only when a held-out pair can judge it); "none"
    n4: str = "none"  # N4 bias-field correction (presets.N4_MODES): "none", every "t1", or "both" volumes of each pair

    @property
    def total_epochs(self) -> int:
        return int(self.epochs) + int(self.epochs_decay)

    def resolved_checkpoint_dir(self) -> Path:
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir)
        out = Path(self.out)
        return out.with_name(out.name.replace(".safetensors", "") + ".checkpoints")

    def learning_rate(self, epoch: int) -> float:
        """Rate for 0-based ``epoch``: constant for ``epochs``, then linear decay (as the reference)."""
        decay = max(0, epoch + 1 - int(self.epochs)) / float(int(self.epochs_decay) + 1)
        return float(self.lr) * (1.0 - decay)

    def fingerprint(self) -> dict:
        """Settings a resumed run must share with the run that wrote the checkpoint."""
        keys = ("model", "network", "planes", "lr", "betas", "batch_size", "context", "seed", "epochs", "epochs_decay", "max_steps_per_epoch", "augment", "patch", "percentile")
        # The data settings of several pairs count only when set, so checkpoints written before they existed still resume.
        many = ("phantom_subjects", "randomize", "phantom_ranges", "augment_copies", "voxel_mm")
        if int(self.prior_stages) != 1:  # likewise: the CNN of a checkpoint learnt on its own prior
            many += ("prior_stages",)
        values = {k: getattr(self, k) for k in keys}  # not asdict: it would deep-copy every training volume
        values.update({k: getattr(self, k) for k in many if getattr(self, k)})
        if self.n4 != "none":
            values["n4"] = self.n4
        if self.pairs:
            values["pairs"] = len(self.pairs)
        return json.loads(json.dumps(values, default=list))


# --- helpers ---------------------------------------------------------------------------
def _load(volume_or_path, what: str) -> Volume:
    if isinstance(volume_or_path, Volume):
        return volume_or_path
    if volume_or_path is None:
        raise T1ToT2Error(f"no {what} volume given: pass --{what.lower().replace(' ', '-')} FILE")
    return read_volume(volume_or_path)


def _describe(volume: Volume) -> dict:
    return {
        "file": volume.meta.get("source_path"),
        "shape": list(volume.shape),
        "spacing_mm": [round(float(s), 6) for s in volume.spacing],
    }


def _distributed():
    """(rank, world_size, local_rank) from the torchrun environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _flatten_optimizer(prefix: str, optimizer) -> tuple:
    """Adam state as named tensors plus the JSON-able remainder."""
    import torch

    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(prefix: str, tensors: dict, extra: dict) -> dict:
    state = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            index, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for name, value in extra["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": extra["param_groups"]}


def _rng_state() -> tuple:
    import torch

    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    python_state = random.getstate()
    extra = {
        "python": [python_state[0], list(python_state[1]), python_state[2]],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, extra


def _set_rng_state(tensors: dict, extra: dict) -> None:
    import torch

    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = extra["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = extra["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def _image_pools(model) -> dict:
    """CycleGAN-style history pools held by the model's modules, by a stable name (they are not in the state dict)."""
    pools = {}
    for module_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(getattr(value, "images", None), list) and callable(getattr(value, "query", None)):
                pools[f"{module_name}.{attr}".lstrip(".")] = value
    return pools


def save_checkpoint(path: Path, model, optimizers: dict, epoch: int, config: TrainConfig, extra: dict) -> Path:
    """Write weights, optimiser and RNG state after ``epoch`` (1-based) atomically, as safetensors."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    optim_meta = {}
    for name, optimizer in optimizers.items():
        named, rest = _flatten_optimizer(f"optim.{name}", optimizer)
        tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in named.items()})
        optim_meta[name] = rest
    pool_sizes = {}
    for name, pool in _image_pools(model).items():
        pool_sizes[name] = len(pool.images)
        tensors.update({f"pool.{name}.{i}": image.detach().cpu().contiguous().clone() for i, image in enumerate(pool.images)})
    rng_tensors, rng_meta = _rng_state()
    tensors.update({k: v.cpu().contiguous().clone() for k, v in rng_tensors.items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "epoch": str(epoch),
        "fingerprint": json.dumps(config.fingerprint(), sort_keys=True),
        "optimizers": json.dumps(optim_meta),
        "rng": json.dumps(rng_meta),
        "pools": json.dumps(pool_sizes),
        "extra": json.dumps(extra, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_checkpoint(path: Path, model, optimizers: dict, config: TrainConfig) -> tuple:
    """Restore a checkpoint into ``model`` and ``optimizers``; returns (epochs done, extra dict)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001
        raise T1ToT2Error(f"checkpoint '{path}' is unreadable: delete it and train without --resume") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise T1ToT2Error(f"'{path}' is not a T1ToT2 training checkpoint: point --checkpoint-dir at the folder of the run to resume")
    saved = json.loads(metadata["fingerprint"])
    current = config.fingerprint()
    changed = [k for k in current if k not in ("epochs", "epochs_decay") and saved.get(k) != current[k]]
    if changed:
        raise T1ToT2Error(
            f"cannot resume: {', '.join(changed)} differ from the checkpointed run: use the same settings or a new --checkpoint-dir"
        )
    tensors = load_file(str(path), device="cpu")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    optim_meta = json.loads(metadata["optimizers"])
    for name, optimizer in optimizers.items():
        optimizer.load_state_dict(_unflatten_optimizer(f"optim.{name}", tensors, optim_meta[name]))
    pool_sizes = json.loads(metadata.get("pools", "{}"))
    for name, pool in _image_pools(model).items():
        device = next(model.parameters()).device
        pool.images = [tensors[f"pool.{name}.{i}"].to(device) for i in range(pool_sizes.get(name, 0))]
    _set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, json.loads(metadata["rng"]))
    return int(metadata["epoch"]), json.loads(metadata["extra"])


class LossLog:
    """Losses per step in a CSV (epoch, step, one column per loss); rows past a resumed epoch are dropped."""

    def __init__(self, path, keep_before_epoch: int | None = None):
        self.path = Path(path) if path else None
        self.columns = None
        self.handle = None
        if self.path is None:
            return
        rows = []
        if keep_before_epoch is not None and self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                self.columns = reader.fieldnames
                rows = [r for r in reader if int(r["epoch"]) < keep_before_epoch]
        with atomic_path(self.path) as tmp:
            with open(tmp, "w", newline="") as f:
                if self.columns:
                    writer = csv.DictWriter(f, self.columns)
                    writer.writeheader()
                    writer.writerows(rows)
        self.handle = open(self.path, "a", newline="")

    def write(self, epoch: int, step: int, losses: dict) -> None:
        if self.handle is None:
            return
        if self.columns is None:
            self.columns = ["epoch", "step", *losses]
            csv.writer(self.handle).writerow(self.columns)
        row = {"epoch": epoch, "step": step, **{k: f"{v:.6g}" for k, v in losses.items()}}
        csv.writer(self.handle).writerow([row.get(c, "") for c in self.columns])
        self.handle.flush()

    def close(self):
        if self.handle is not None:
            self.handle.close()


# --- training --------------------------------------------------------------------------
class _RememberedPrior:
    """A fitted prior that remembers its estimates: the trees never change during training, so the validation and
    held-out T1s (the same volumes every epoch) get theirs once.  Keyed on the volume's bytes, zoom and error flag."""

    def __init__(self, regressor):
        self.regressor = regressor
        self._estimates = {}

    def __getattr__(self, name):
        return getattr(self.regressor, name)

    def predict_volume(self, normalised_t1, with_error: bool = False, progress=None, zoom=None):
        import hashlib

        x = np.ascontiguousarray(normalised_t1, dtype=np.float32)
        key = (x.shape, hashlib.blake2b(x.data, digest_size=16).hexdigest(), bool(with_error),
               None if zoom is None else tuple(np.round(np.asarray(zoom, float), 9)))
        if key not in self._estimates:
            self._estimates[key] = self.regressor.predict_volume(x, with_error=with_error, progress=progress, zoom=zoom)
        elif progress is not None:
            progress(1, 1)
        estimate = self._estimates[key]
        return tuple(a.copy() for a in estimate) if isinstance(estimate, tuple) else estimate.copy()


@dataclass
class _Run:
    """What one training run builds before its loop: device, data, model, optimisers."""

    device: object
    rank: int
    world: int
    distributed: bool
    planes: list
    context: int
    net_config: dict = None
    dataset: object = None
    prior_model: object = None
    model: object = None
    optimizers: dict = None
    phases: list = None
    layout: object = None
    train_module: object = None
    pairs: list = None
    validation: tuple = None
    gate: tuple = None  # held-out (T1, T2) that decides whether the CNN stage is kept
    native_pairs: list = None  # the pairs on their own grids (the trees' features are zoomed to the model's mm)
    scoring_prior: object = None  # the prior as validation and the gate use it (_RememberedPrior)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train(config: TrainConfig, progress=None, cancel_event: threading.Event | None = None) -> Path:
    """Train a model as ``config`` says and write its model file; returns the model path.

    ``progress`` receives dict events ("start", "step", "epoch", "done").  If
    ``cancel_event`` gets set, training stops before the next step and raises
    :class:`TrainingCancelled`, leaving the last complete checkpoint.
    """
    import torch

    from dataclasses import replace

    emit = progress or (lambda event: None)
    started = time.time()
    out = Path(config.out)
    planes, context = _check_config(config)
    config = replace(config, percentile=_percentile(config))
    pairs, validation, gate, natives = _training_pairs(config, emit)
    run = _setup_devices(config, planes, context)
    run.pairs, run.validation, run.gate, run.native_pairs = pairs, validation, gate, natives
    if not run.is_main:
        emit = lambda event: None  # noqa: E731 - only rank 0 reports
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    skipped = _skipped_correction(config, gate)
    _build(run, config, emit, cnn_trains=skipped is None)
    checkpoint_path = config.resolved_checkpoint_dir() / CHECKPOINT_NAME
    start_epoch, history = _resume(run, config, checkpoint_path) if skipped is None else (0, {"epochs": []})
    log = LossLog(config.loss_csv if run.is_main and skipped is None else None,
                  keep_before_epoch=start_epoch + 1 if config.resume else None)
    try:
        if skipped is None:
            step_times = _loop(run, config, start_epoch, history, checkpoint_path, log, emit, cancel_event)
        else:  # no epoch runs: the CNN's head at zero returns the prior unchanged
            step_times = []
            emit({"event": "correction", "trained": False, "reason": skipped})
            run.model.generator.reset_head()
        if run.is_main:
            correction = _gate_correction(run, config, emit) if skipped is None else \
                {"kept": False, "trained": False, "reason": skipped}
            _write_model(run, config, history, step_times, started, correction)
        _write_debug_hash(run.model, run.rank)
        if run.distributed:
            torch.distributed.barrier()
    finally:
        log.close()
        if run.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    emit({"event": "done", "model": str(out), "seconds": round(time.time() - started, 2)})
    return out


def _skipped_correction(config: TrainConfig, gate) -> str | None:
    """Why the refiner's CNN stage is not trained (the model is then its prior), or None when it is."""
    if correction_trains(config.model, config.correction, gate is not None):
        return None
    if config.correction == "none":
        return "--correction none: the model is its trees"
    return ("no held-out pair to judge the CNN stage (--val-t1/--val-t2 or --phantom-subjects), so the model is its "
            "trees (--correction train trains the CNN anyway)")


def _check_config(config: TrainConfig) -> tuple:
    """Refuse, in one line, settings no run can use; returns (planes, context)."""
    from .. import networks
    from ..core.devices import check_precision

    out = Path(config.out)
    if out.suffix != ".safetensors":
        raise T1ToT2Error(f"model output '{out.name}' must end in .safetensors: rename --out")
    planes = check_planes(config.planes)
    context = check_context(config.context)
    if check_precision(config.precision) == "fp16":
        raise T1ToT2Error("training in fp16 is not supported (it needs loss scaling): use --precision bf16 or fp32")
    if config.model not in networks.TRAINABLE:
        raise T1ToT2Error(f"unknown model {config.model!r}: use one of {', '.join(networks.TRAINABLE)}")
    if config.total_epochs < 1:
        raise T1ToT2Error(f"epochs must be at least 1 (got {config.total_epochs})")
    if int(config.epochs) < 0 or int(config.epochs_decay) < 0:
        raise T1ToT2Error(f"epochs must be at least 1 and epochs-decay at least 0 (got {config.epochs} and {config.epochs_decay})")
    if not np.isfinite(float(config.lr)) or float(config.lr) <= 0:
        raise T1ToT2Error(f"learning rate {config.lr} must be a positive number: use e.g. --lr 2e-4")
    if int(config.batch_size) < 1:
        raise T1ToT2Error(f"batch size {config.batch_size} must be at least 1: use e.g. --batch-size 1")
    if config.max_steps_per_epoch is not None and int(config.max_steps_per_epoch) < 1:
        raise T1ToT2Error(f"max steps per epoch {config.max_steps_per_epoch} must be at least 1: raise it or leave it out")
    if (config.val_t1 is None) != (config.val_t2 is None):
        raise T1ToT2Error("validation needs both --val-t1 and --val-t2 (or neither)")
    if int(config.phantom_subjects) < 0 or int(config.augment_copies) < 0:
        raise T1ToT2Error("phantom subjects and augmented copies must be at least 0")
    if config.correction not in CORRECTIONS:
        raise T1ToT2Error(f"unknown correction {config.correction!r}: use one of {', '.join(CORRECTIONS)}")
    if config.n4 not in N4_MODES:
        raise T1ToT2Error(f"unknown N4 mode {config.n4!r}: use one of {', '.join(N4_MODES)}")
    if int(config.prior_stages) not in (1, 2):
        raise T1ToT2Error(f"prior stages must be 1 or 2 (got {config.prior_stages})")
    if config.model != "refiner" and (config.correction != "train" or int(config.prior_stages) != 1):
        raise T1ToT2Error(f"--correction and --prior-stages apply to the refiner only, not {config.model}: leave them out")
    many = bool(config.pairs) or int(config.phantom_subjects) > 0 or int(config.augment_copies) > 0
    if many and config.model != "refiner":
        raise T1ToT2Error("several training pairs (--pairs, repeated --t1/--t2, --phantom-subjects, --augment-copies) train the refiner only: use --model refiner")
    return planes, context


def _training_pairs(config: TrainConfig, emit) -> tuple:
    """(training pairs on one voxel size, validation pair or None, held-out gate pair or None, the training pairs on
    their own grids)."""
    from .pairs import augment_t1, checked_pairs, on_common_grid, phantom_pairs

    given = ([(config.t1, config.t2)] if config.t1 is not None or config.t2 is not None else []) + list(config.pairs or ())
    pairs = checked_pairs(given, _load) if given else []
    gate = None
    if int(config.phantom_subjects):
        rendered = phantom_pairs(int(config.phantom_subjects) + 1, PHANTOM_SEED_OFFSET + int(config.seed), config.randomize,
                                 config.phantom_ranges)
        gate = rendered[-1][:2]  # the last subject's right hand never trains: it decides whether the CNN is kept
        pairs += [p[:2] for p in rendered[:-2]]
        emit({"event": "phantom", "subjects": int(config.phantom_subjects), "randomize": bool(config.randomize)})
    if not pairs:
        _load(None, "T1")
    if int(config.augment_copies):
        rng = np.random.default_rng([int(config.seed), 29])
        pairs += [(augment_t1(t1, rng), t2) for _ in range(int(config.augment_copies)) for t1, t2 in list(pairs)]
    pairs = [_bias_corrected(pair, config.n4) for pair in pairs]
    natives = list(pairs)
    pairs, voxel = on_common_grid(pairs, config.voxel_mm)
    validation = None
    if config.val_t1 is not None:
        validation = _bias_corrected(checked_pairs([(config.val_t1, config.val_t2)],
                                                   lambda v, w: _load(v, "val " + w))[0], config.n4)
    if gate is not None:
        gate = on_common_grid([_bias_corrected(gate, config.n4)], voxel)[0][0]
    elif validation is not None:
        gate = validation
    return pairs, validation, gate, natives


def _bias_corrected(pair, n4: str) -> tuple:
    """``pair`` with N4 applied as ``n4`` says, on each volume's own grid (synthesis corrects its T1 the same way, before
    any resampling: :func:`~T1ToT2Lib.inference.preprocess.prepare_input`).  Augmented copies are corrected after their
    augmentation, as any T1 is at synthesis."""
    from ..inference.preprocess import n4_correct

    t1, t2 = pair
    if n4 == "none":
        return t1, t2
    return n4_correct(t1), (n4_correct(t2) if n4 == "both" else t2)


def _setup_devices(config: TrainConfig, planes, context) -> _Run:
    """Device, rank and world size (torchrun's environment; one process otherwise)."""
    import torch

    from ..core.devices import resolve_device

    rank, world, local_rank = _distributed()
    distributed = world > 1
    if distributed:
        import torch.distributed as dist

        if config.device in ("auto", "cuda") and torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        else:
            device = resolve_device("cpu" if config.device == "auto" else config.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    else:
        device = resolve_device(config.device)
    return _Run(device, rank, world, distributed, planes, context)


def _build(run: _Run, config: TrainConfig, emit, cnn_trains: bool) -> None:
    """The network config, the prior (refiner), the dataset, the model, its optimisers and DDP wrapper.  The
    out-of-fold training prior is for the CNN alone: when no epoch will run, the trees' own estimate stands in."""
    import torch

    from .. import networks

    t1 = run.pairs[0][0]
    overrides = dict(config.network or {})
    if config.model == "pix2pix" and "depth" not in overrides:
        # The U-Net halves down to 1x1: as many levels as the largest slice side needs (9 at 512, as the paper).
        overrides["depth"] = networks.depth_for_size(max(max(t1.shape[a] for a in range(3) if a != t1.plane_axis(p)) for p in run.planes))
    run.net_config = networks.default_config(config.model, in_channels=run.context, **overrides)
    multiple = int(networks.required_multiple(run.net_config))
    priors = [None] * len(run.pairs)
    if networks.uses_prior(run.net_config):
        cross_fit = bool(config.prior_cross_fit) and cnn_trains
        if len(run.pairs) == 1:
            run.prior_model, priors[0] = fit_prior(*run.pairs[0], config, emit, cross_fit)
        else:
            run.prior_model, priors = _fit_prior_natively(run, config, emit, cross_fit)
        run.scoring_prior = _RememberedPrior(run.prior_model)
    datasets = [SliceDataset(a, b, run.planes, context=run.context, multiple=multiple, percentile=config.percentile,
                             augment=config.augment, prior=prior, patch=config.patch) for (a, b), prior in zip(run.pairs, priors)]
    run.dataset = datasets[0] if len(datasets) == 1 else PairsDataset(datasets)
    # The refiner is plain full-resolution convolutions: in channels-last layout oneDNN runs its steps
    # about 1.6 times faster on the CPU (0.42 -> 0.26 s per batch of 16 patches of 48 pixels).
    run.layout = torch.channels_last if run.net_config["arch"] == "refiner" else torch.contiguous_format
    run.model = networks.build_model(run.net_config).to(device=run.device, memory_format=run.layout)
    run.optimizers = {name: torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas))
                      for name, params in run.model.parameter_groups().items() if params}
    # Pix2Pix's reference steps D then G, CycleGAN's G then D; a model may state its order.
    run.phases = [p for p in getattr(run.model, "phases", ("discriminator", "generator")) if p in run.optimizers]
    run.train_module = run.model
    if run.distributed:
        from torch.nn.parallel import DistributedDataParallel

        run.train_module = DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None, find_unused_parameters=True)


def _fit_prior_natively(run: _Run, config: TrainConfig, emit, cross_fit: bool) -> tuple:
    """The trees fitted on every pair on its own grid, their features zoomed to the model's voxel size in mm (as
    synthesis runs them on a T1 of another voxel size); each pair's prior then goes onto that pair's common grid,
    where the CNN learns, as synthesis hands the network the prior."""
    from ..inference.preprocess import onto_grid
    from .prior import fit_prior_pairs

    voxel = run.pairs[0][0].spacing
    regressor, priors = fit_prior_pairs(run.native_pairs, config.seed, config.percentile, cross_fit, emit,
                                        fit={"context_stage": int(config.prior_stages) == 2}, voxel_mm=voxel)
    common = []
    for (native, _), (t1, _), prior in zip(run.native_pairs, run.pairs, priors):
        common.append(prior if native.same_geometry(t1, tol=0) else onto_grid(native.with_array(prior), t1).array)
    return regressor, common


def _resume(run: _Run, config: TrainConfig, checkpoint_path: Path) -> tuple:
    """(epochs already done, loss history): from the checkpoint with ``config.resume``, else (0, empty)."""
    if not config.resume:
        return 0, {"epochs": []}
    if not checkpoint_path.exists():
        raise T1ToT2Error(f"--resume found no checkpoint at '{checkpoint_path}': pass the --checkpoint-dir of the run to resume")
    start_epoch, history = load_checkpoint(checkpoint_path, run.model, run.optimizers, config)
    if start_epoch >= config.total_epochs:
        raise T1ToT2Error(
            f"the checkpoint already has {start_epoch} epoch(s), not fewer than --epochs {config.total_epochs}: raise --epochs to train on"
        )
    return start_epoch, history


def _batches_of(run: _Run, config: TrainConfig, epoch: int) -> list:
    batches = run.dataset.epoch_batches(config.batch_size, config.seed, epoch, run.rank, run.world)
    return batches[: int(config.max_steps_per_epoch)] if config.max_steps_per_epoch else batches


def _loop(run: _Run, config: TrainConfig, start_epoch: int, history: dict, checkpoint_path: Path, log, emit, cancel_event) -> list:
    """The epochs: steps, validation, a checkpoint after each; returns the step times."""
    import torch

    steps_per_epoch = len(_batches_of(run, config, start_epoch))
    emit({
        "event": "start", "model": config.model, "planes": run.planes, "epochs": config.total_epochs,
        "start_epoch": start_epoch + 1, "steps_per_epoch": steps_per_epoch, "slices": len(run.dataset),
        "device": str(run.device), "precision": config.precision, "world_size": run.world, "config": run.net_config,
        "pairs": len(run.pairs),
    })
    step_times = []
    remaining = [(config.total_epochs - start_epoch) * steps_per_epoch]
    for epoch in range(start_epoch, config.total_epochs):
        for group in (g for opt in run.optimizers.values() for g in opt.param_groups):
            group["lr"] = config.learning_rate(epoch)
        run.train_module.train()
        batches = _batches_of(run, config, epoch)
        sums = {}
        for step, batch in enumerate(batches):
            if cancel_event is not None and cancel_event.is_set():
                kept = f"the checkpoint after epoch {epoch} is kept: continue with --resume" if epoch else "no epoch was complete, so nothing was kept: start again"
                raise TrainingCancelled(f"training cancelled during epoch {epoch + 1}; {kept}")
            losses = _step(run, config, epoch, step, batch, step_times)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            remaining[0] -= 1
            log.write(epoch + 1, step + 1, losses)
            recent = step_times[-20:]
            emit({"event": "step", "epoch": epoch + 1, "step": step + 1, "steps": len(batches),
                  "losses": losses, "eta_s": round(remaining[0] * sum(recent) / len(recent), 1)})
        if run.distributed:
            _average_buffers(run.model, run.world)
        mean_losses = {k: v / max(1, len(batches)) for k, v in sums.items()}
        val_metrics = None
        if run.is_main and run.validation is not None:
            val_metrics = validate(run.model, run.net_config, run.validation, run.planes, run.dataset.t2_scale, config,
                                   run.device, run.scoring_prior, voxel_mm=run.pairs[0][0].spacing)
        history["epochs"].append({"epoch": epoch + 1, "losses": mean_losses, "val_metrics": val_metrics})
        written = None
        if run.is_main:
            written = str(save_checkpoint(checkpoint_path, run.model, run.optimizers, epoch + 1, config, history))
        if run.distributed:
            torch.distributed.barrier()
        emit({"event": "epoch", "epoch": epoch + 1, "losses": mean_losses, "val_metrics": val_metrics, "checkpoint": written})
    return step_times


def _step(run: _Run, config: TrainConfig, epoch: int, step: int, batch, step_times: list) -> dict:
    """One optimisation step of every phase on ``batch``; returns its losses."""
    import torch

    from ..core.devices import autocast_context

    tick = time.perf_counter()
    augment_rng = np.random.default_rng([config.seed, epoch, step, run.rank]) if config.augment or config.patch else None
    a, b = run.dataset.arrays(batch, augment_rng)
    real_a = torch.from_numpy(a).to(device=run.device, memory_format=run.layout)
    real_b = torch.from_numpy(b).to(device=run.device, memory_format=run.layout)
    losses = {}
    for phase in run.phases:
        with autocast_context(run.device, config.precision):
            loss, logs = run.train_module(phase, real_a, real_b)
        run.optimizers[phase].zero_grad(set_to_none=True)
        loss.backward()
        run.optimizers[phase].step()
        losses.update({k: float(v) for k, v in logs.items()})
    step_times.append(time.perf_counter() - tick)
    return losses


def _gate_correction(run: _Run, config: TrainConfig, emit) -> dict | None:
    """The refiner's CNN stage is kept only if it is not worse than its prior on the held-out pair (a held-out phantom
    subject, else the validation pair) on any of NRMSE, PSNR, SSIM; otherwise its head is zeroed and the model *is*
    the prior.  None when there is no held-out pair."""
    if run.gate is None or run.prior_model is None or not hasattr(run.model.generator, "reset_head"):
        return None
    record = correction_gate(run.model.generator, run.net_config, run.gate, run.planes, run.dataset.t2_scale, config,
                             run.device, run.scoring_prior, voxel_mm=run.pairs[0][0].spacing)
    emit({"event": "gate", **record})
    return record


def correction_gate(generator, net_config, held_out, planes, t2_scale, config, device, prior, voxel_mm=None) -> dict:
    """Score ``generator`` (a refiner) and its prior alone on ``held_out`` (synthesised as a model trained at
    ``voxel_mm`` synthesises it); zero its head unless it is at least as good on every metric.
    Returns {"kept", "trained", "refined", "prior"}."""
    import copy

    holder = type("Holder", (), {})()
    holder.generator = generator
    refined = validate(holder, net_config, held_out, planes, t2_scale, config, device, prior, voxel_mm)
    alone = type("Holder", (), {})()
    alone.generator = copy.deepcopy(generator)
    alone.generator.reset_head()
    baseline = validate(alone, net_config, held_out, planes, t2_scale, config, device, prior, voxel_mm)
    kept = refined["psnr"] >= baseline["psnr"] and refined["ssim"] >= baseline["ssim"] and refined["nrmse"] <= baseline["nrmse"]
    if not kept:
        generator.reset_head()
    return {"kept": bool(kept), "trained": True, "refined": refined, "prior": baseline}


def _write_model(run: _Run, config: TrainConfig, history: dict, step_times: list, started: float, correction) -> None:
    """The model file: generator (and prior) weights and the metadata synthesis and the card read."""
    from ..inference.preprocess import preprocessing_record
    from ..networks.modelfile import save_model

    t1, t2 = run.pairs[0]
    trained = correction is None or correction.get("trained", True)
    last_val = next((e["val_metrics"] for e in reversed(history["epochs"]) if e["val_metrics"]), None)
    steps_per_epoch = len(_batches_of(run, config, 0)) if trained else 0
    metadata = {
        "config": run.net_config,
        "planes": run.planes,
        "in_channels": str(run.context),
        "intensity": {"t1_percentile": config.percentile, "t2_percentile": config.percentile, "t2_scale": run.dataset.t2_scale,
                      "training_t1_scale": run.dataset.t1_scale},
        "training": {
            "t1": _describe(t1), "t2": _describe(t2),
            "validation": [_describe(v) for v in run.validation] if run.validation else None,
            "slices": len(run.dataset), "epochs": config.epochs if trained else 0,
            "epochs_decay": config.epochs_decay if trained else 0, "prior_stages": int(config.prior_stages),
            "lr": config.lr, "betas": list(config.betas), "batch_size": config.batch_size, "seed": config.seed,
            "device": str(run.device), "precision": config.precision, "world_size": run.world,
            "steps_per_epoch": steps_per_epoch, "augment": config.augment, "patch": config.patch,
            "seconds": round(time.time() - started, 1),
            "mean_step_seconds": round(float(np.mean(step_times)), 4) if step_times else None,
            "losses": history["epochs"][-1]["losses"] if history["epochs"] else None,
            "t1_sequences": sequence.recorded(a for a, _ in (run.native_pairs or run.pairs)),
        },
        "validation_metrics": last_val or {},
        # voxel size, N4 and whether the trees learnt an interpolated T1, repeated at synthesis (inference.preprocess)
        "preprocessing": preprocessing_record(t1, run.pairs[0][0] if len(run.pairs) == 1 else run.native_pairs[0][0]),
    }
    if len(run.pairs) > 1 or config.phantom_subjects:
        metadata["training"]["pairs"] = [_describe(a) | {"meta": {k: a.meta[k] for k in ("acquisition", "resampled_from_mm", "augmented") if k in a.meta}}
                                         for a, _ in run.pairs]
        metadata["training"]["phantom_subjects"] = int(config.phantom_subjects)
        metadata["training"]["randomize"] = bool(config.randomize)
    if correction is not None:
        metadata["correction"] = correction
    weights = dict(run.model.generator.state_dict())
    if run.prior_model is not None:
        weights.update(run.prior_model.to_tensors("prior"))
        metadata["prior"] = run.prior_model.metadata()
    save_model(Path(config.out), weights, metadata)


def fit_prior(t1: Volume, t2: Volume, config: TrainConfig, emit, cross_fit: bool):
    """Fit the feature regression on the training pair; returns (regressor, training prior).

    The network learns to correct the prior, so it must see the prior's errors as they are on an unseen
    hand: the training prior is cross-fitted (each fold of the volume's slabs predicted by trees fitted on the other)
    unless ``cross_fit`` is false, when no network will learn from it.
    """
    from ..networks.feature_regression import fit_feature_regressor
    from .prior import normalised_pair

    tick = time.perf_counter()
    t1n, t2n, mask = normalised_pair(t1, t2, config.percentile)
    regressor, prior = fit_feature_regressor(t1n, t2n, mask, seed=config.seed, cross_fit=cross_fit,
                                             fit={"context_stage": int(config.prior_stages) == 2})
    emit({"event": "prior", "kind": "feature_regression", "trees": regressor.trees.metadata()["n_trees"],
          "stages": int(config.prior_stages), "seconds": round(time.perf_counter() - tick, 1)})
    return regressor, prior


def _percentile(config: TrainConfig) -> float:
    """The foreground percentile ``config`` normalises by: its own, else the model's default (presets)."""
    from .presets import normalisation_percentile

    return float(normalisation_percentile(config.model) if config.percentile is None else config.percentile)


def validate(model, net_config, validation, planes, t2_scale, config, device, prior=None, voxel_mm=None) -> dict:
    """Synthesise the validation T1 with the current generator and score it against the validation T2; with
    ``voxel_mm`` (the training grid's) a T1 of another voxel size goes through synthesis as the model file will."""
    from .. import networks
    from ..networks.modelfile import LoadedModel
    from ..inference.synthesize import synthesize_volume

    val_t1, val_t2 = validation
    generator = model.generator
    was_training = generator.training
    loaded = LoadedModel(
        generator=generator, config=net_config, planes=list(planes), in_channels=int(config.context),
        metadata={} if voxel_mm is None else {"preprocessing": {"voxel_mm": [float(v) for v in voxel_mm], "n4": False}},
        t2_scale=float(t2_scale), t1_percentile=_percentile(config), multiple=int(networks.required_multiple(net_config)),
        name=f"{config.model} (training)", prior=prior,
    )
    plane = planes[0] if len(planes) == 1 else "fuse"
    try:
        generated = synthesize_volume(loaded, val_t1, plane=plane, device=device, precision=config.precision)
    finally:
        generator.train(was_training)
    try:
        from ..core.metrics import evaluate_volumes

        result = evaluate_volumes(generated, val_t2, planes=planes)
        summary = {k: result["overall"][k]["mean"] for k in ("nrmse", "psnr", "ssim")}
    except ImportError:
        from skimage.metrics import peak_signal_noise_ratio, structural_similarity

        g, i = generated.array, val_t2.array
        summary = {
            "nrmse": float(np.sqrt(np.mean((g - i) ** 2)) / (i.max() - i.min())),
            "psnr": float(peak_signal_noise_ratio(i, g, data_range=float(max(i.max(), g.max())))),
            "ssim": float(structural_similarity(i, g, data_range=float(max(i.max(), g.max()) - min(i.min(), g.min())))),
        }
    summary["plane"] = plane
    return summary


def _average_buffers(model, world: int) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks.

    DDP keeps parameters in step but each rank updates its running statistics
    from its own batches; averaging them makes every rank hold the same model.
    """
    import torch
    import torch.distributed as dist

    for buffer in model.buffers():
        if torch.is_floating_point(buffer):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)


def _write_debug_hash(model, rank: int) -> None:
    folder = os.environ.get(DEBUG_HASH_ENV)
    if not folder:
        return
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.generator.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"rank{rank}.sha256").write_text(digest.hexdigest())


# --- command line ----------------------------------------------------------------------
def json_progress(stream=None):
    """A progress callback printing one JSON object per line."""
    stream = stream or sys.stdout

    def emit(event: dict):
        stream.write(json.dumps(event, default=str) + "\n")
        stream.flush()

    return emit


class BarProgress:
    """A tqdm bar over all steps of all epochs, with the latest losses as its postfix."""

    def __init__(self):
        self.bar = None

    def __call__(self, event: dict):
        from tqdm import tqdm

        kind = event["event"]
        if kind == "start":
            total = (event["epochs"] - event["start_epoch"] + 1) * event["steps_per_epoch"]
            self.bar = tqdm(total=total, unit="step", desc=f"train {event['model']}", file=sys.stderr)
        elif kind == "step" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in list(event["losses"].items())[:4]}, refresh=False)
        elif kind == "epoch" and self.bar is not None:
            metrics = event.get("val_metrics")
            if metrics:
                self.bar.write(f"epoch {event['epoch']}: validation NRMSE {metrics['nrmse']:.4f} PSNR {metrics['psnr']:.2f} SSIM {metrics['ssim']:.4f}")
        elif kind == "done" and self.bar is not None:
            self.bar.close()
            print(f"model written to {event['model']}", file=sys.stderr)


def _parse_betas(text: str) -> tuple:
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise T1ToT2Error(f"--betas {text!r} must be two numbers like 0.5,0.999") from None
    return b1, b2


def preset_options(model: str, preset: str) -> tuple:
    """(network overrides, context) that ``--preset`` gives ``model`` before explicit options apply."""
    from .presets import training_defaults

    defaults = training_defaults(model, preset)
    return defaults["network"], defaults["context"]


