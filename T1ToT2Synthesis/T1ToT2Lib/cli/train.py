"""``t1tot2 train``: its arguments, checked and handed to the library."""

from __future__ import annotations

import signal
import sys
import threading

import numpy as np

from ..core.errors import T1ToT2Error
from ..core.volume import PLANES
from ..io.files import read_volume
from ..training.data import check_planes
from ..training.presets import CORRECTIONS, N4_MODES, correction_trains
from ..training.train import (
    BarProgress,
    TrainConfig,
    TrainingCancelled,
    _parse_betas,
    json_progress,
    train,
)


def register_cli(subparsers):
    p = subparsers.add_parser("train", help="train a T1 -> T2 model on paired T1/T2 volumes")
    p.add_argument("--t1", action="append", help="T1 volume (NIfTI/NRRD/MHA file or DICOM folder); repeat with --t2 for several pairs")
    p.add_argument("--t2", action="append", help="T2 volume on the same grid as its --t1 (same count and order as --t1)")
    p.add_argument("--pairs", help="CSV of training pairs, columns t1,t2 (paths relative to the CSV; DICOM folders allowed); "
                                   "pairs may lie on different grids: all are resampled to one voxel size")
    p.add_argument("--phantom-subjects", type=int, default=0,
                   help="render N phantom subjects on the fly and train on both hands of each (refiner; one more subject is "
                        "held out and decides whether the CNN stage is kept)")
    p.add_argument("--randomize", action="store_true", help="with --phantom-subjects: randomized acquisitions (voxel size, noise, coil field, sequence, pose)")
    p.add_argument("--augment-copies", type=int, default=0,
                   help="refiner: add N augmented copies of every training T1 (intensity gamma, coil field, noise, blur)")
    p.add_argument("--voxel-mm", help="refiner with several pairs: the common voxel size (one value or I,J,K mm; default: the first T1's)")
    p.add_argument("--t1-series-uid", help="SeriesInstanceUID of the T1 when --t1 is a DICOM folder with several series")
    p.add_argument("--t2-series-uid", help="SeriesInstanceUID of the T2 when --t2 is a DICOM folder with several series")
    p.add_argument("--val-t1", help="validation T1 (scored after every epoch)")
    p.add_argument("--val-t2", help="validation T2 on the same grid as --val-t1")
    p.add_argument("--align", action="store_true",
                   help="register each T2 to its T1 (rigid, mutual information) and resample it onto the T1 grid when the grids differ")
    p.add_argument("--n4", choices=N4_MODES, nargs="?", const="both",
                   help="N4 bias-field correction of every training T1 ('t1', the refiner's default), of T1s and T2s "
                        "('both', also a bare --n4) or of none ('none', the GANs' default); recorded in the model: "
                        "synthesis corrects its T1 too")
    p.add_argument("--model", default="refiner", choices=("refiner", "pix2pix", "cyclegan", "unit"),
                   help="refiner (default, recommended): boosted trees on 3-D T1 features + a residual CNN that corrects them; "
                        "pix2pix, cyclegan, unit: the paper's GANs")
    p.add_argument("--preset", default="recommended", choices=("recommended", "paper"),
                   help="Pix2Pix defaults: 'recommended' = resize-convolution up-sampling, instance norm, 3-slice 2.5-D input; "
                        "'paper' = the paper's U-Net. Explicit options override either")
    p.add_argument("--planes", default=",".join(PLANES), help="comma-separated planes to train on (default: all three)")
    p.add_argument("--epochs", type=int, help="epochs at constant learning rate (GANs: 15 as the paper; refiner: 8)")
    p.add_argument("--epochs-decay", type=int, help="extra epochs with the learning rate decaying linearly to 0 (refiner: 8, GANs: 0)")
    p.add_argument("--lr", type=float, help="Adam learning rate (GANs: 2e-4 as the paper; refiner: 2e-3)")
    p.add_argument("--betas", help="Adam betas (GANs: 0.5,0.999; refiner: 0.9,0.999)")
    p.add_argument("--batch-size", type=int, help="slices per step (GANs: 1; refiner: 16)")
    p.add_argument("--context", type=int, help="slices per input (1 = 2-D as the paper, 3 or 5 = 2.5-D; default from --preset)")
    p.add_argument("--ngf", type=int, help="generator base width (default 64; refiner 32)")
    p.add_argument("--n-layers", type=int, help="refiner: dilated convolution layers (default 6)")
    p.add_argument("--ndf", type=int, help="discriminator base width (default 64)")
    p.add_argument("--depth", type=int, help="U-Net down-samplings (default: from the network)")
    p.add_argument("--n-blocks", type=int, help="ResNet blocks of CycleGAN/UNIT generators")
    p.add_argument("--upsample", choices=("transpose", "resize"), help="up-sampling: transposed or resize convolution")
    p.add_argument("--norm", choices=("batch", "instance"))
    p.add_argument("--prior-stages", type=int, choices=(1, 2),
                   help="refiner: 1 = trees on T1 features; 2 = plus an auto-context stage that reads the first stage's T2 "
                        "estimate (default: 2)")
    p.add_argument("--correction", choices=CORRECTIONS,
                   help="refiner's CNN stage: auto = trained only when a held-out pair (--val-t1/--val-t2 or "
                        "--phantom-subjects) can judge it, else the model is its trees (default); train = always; none = never")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "mps", "cpu"))
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", action="store_true", default=None, help="random flips of the training slices (refiner: on)")
    p.add_argument("--patch", type=int, help="train on random square patches of this size centred on the object (refiner: 48; GANs: whole slices)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--checkpoint-dir", help="where per-epoch checkpoints go (default: <out>.checkpoints)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --checkpoint-dir")
    p.add_argument("--max-steps-per-epoch", type=int, help="cap the steps of each epoch (quick runs)")
    p.add_argument("--progress", default="bar", choices=("bar", "json", "none"))
    p.add_argument("--loss-csv", help="write the losses of every step to this CSV file")
    p.set_defaults(func=run_train)


def _voxel(text):
    """--voxel-mm as a list of one or three positive numbers, or None."""
    if not text:
        return None
    try:
        voxel = [float(v) for v in text.split(",")]
    except ValueError:
        voxel = []
    if len(voxel) not in (1, 3) or min(voxel) <= 0:
        raise T1ToT2Error(f"--voxel-mm {text!r} needs one or three positive numbers (mm)")
    return voxel


def _given_pairs(args) -> list:
    """The (t1, t2) pairs of repeated --t1/--t2 and of --pairs (paths, or volumes read from a chosen DICOM series)."""
    t1s, t2s = list(args.t1 or []), list(args.t2 or [])
    if len(t1s) != len(t2s):
        raise T1ToT2Error(f"{len(t1s)} --t1 but {len(t2s)} --t2: give one --t2 for every --t1, in the same order")
    if (args.t1_series_uid or args.t2_series_uid) and len(t1s) != 1:
        raise T1ToT2Error("--t1-series-uid/--t2-series-uid need exactly one --t1 and --t2")
    pairs = list(zip(t1s, t2s))
    if pairs and args.t1_series_uid:
        pairs[0] = (read_volume(pairs[0][0], series_uid=args.t1_series_uid), pairs[0][1])
    if pairs and args.t2_series_uid:
        pairs[0] = (pairs[0][0], read_volume(pairs[0][1], series_uid=args.t2_series_uid))
    if args.pairs:
        from ..training.pairs import read_pairs_csv

        pairs += read_pairs_csv(args.pairs)
    if not pairs and not args.phantom_subjects:
        raise T1ToT2Error("no training data: give --t1 and --t2, --pairs PAIRS.CSV or --phantom-subjects N")
    if args.randomize and not args.phantom_subjects:
        raise T1ToT2Error("--randomize applies to --phantom-subjects: add --phantom-subjects N or drop it")
    return pairs


#: Options that only the refiner's CNN stage reads (argparse names).
CNN_OPTIONS = ("epochs", "epochs_decay", "lr", "betas", "batch_size", "augment", "patch", "max_steps_per_epoch", "resume",
               "loss_csv", "checkpoint_dir")


def _check_correction(args, defaults: dict) -> None:
    """Fill in --prior-stages and --correction; refuse CNN options when the CNN stage will not be trained."""
    if args.model != "refiner" and (args.prior_stages is not None or args.correction is not None):
        raise T1ToT2Error(f"--prior-stages and --correction apply to the refiner only, not {args.model}: leave them out")
    args.prior_stages = defaults["prior_stages"] if args.prior_stages is None else args.prior_stages
    args.correction = defaults["correction"] if args.correction is None else args.correction
    if correction_trains(args.model, args.correction, bool(args.val_t1 and args.val_t2) or bool(args.phantom_subjects)):
        return
    given = [k for k in CNN_OPTIONS if getattr(args, k) not in (None, False)]
    if given:
        option = "--" + given[0].replace("_", "-")
        why = ("--correction none trains no CNN" if args.correction == "none" else
               "without a held-out pair --correction auto trains no CNN (the model is its trees)")
        raise T1ToT2Error(f"{option} sets up the refiner's CNN stage, but {why}: add --val-t1/--val-t2, or "
                          f"--correction train, or drop {option}")


def run_train(args) -> int:
    from ..training.presets import training_defaults

    defaults = training_defaults(args.model, args.preset)
    _check_correction(args, defaults)
    explicit = {k: getattr(args, k) for k in ("ngf", "ndf", "depth", "n_blocks", "upsample", "norm", "n_layers")
                if getattr(args, k, None) is not None}
    if args.model != "refiner" and "n_layers" in explicit:
        raise T1ToT2Error("--n-layers applies to the refiner only: drop it or use --model refiner")
    if args.model == "refiner":
        unused = [k for k in ("ndf", "depth", "n_blocks", "upsample") if k in explicit]
        if unused:
            raise T1ToT2Error(f"--{unused[0].replace('_', '-')} does not apply to the refiner: drop it or choose a GAN with --model")
    overrides = {**defaults["network"], **explicit}
    args.context = defaults["context"] if args.context is None else args.context
    for key in ("epochs", "epochs_decay", "lr", "batch_size", "augment", "patch"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    betas = tuple(defaults["betas"]) if args.betas is None else _parse_betas(args.betas)
    for key, low in (("epochs", 1), ("epochs_decay", 0), ("batch_size", 1)):
        if int(getattr(args, key)) < low:
            raise T1ToT2Error(f"--{key.replace('_', '-')} {getattr(args, key)} must be at least {low}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        raise T1ToT2Error(f"--lr {args.lr} must be a positive number, e.g. 2e-4")
    pairs = _given_pairs(args)
    if args.align:  # T2s on their own grid are registered and resampled onto their T1's (T1ToT2Lib.training.align)
        from ..training.align import aligned_pair

        pairs = [aligned_pair(t1, t2) for t1, t2 in pairs]
        if args.val_t1 and args.val_t2:
            args.val_t1, args.val_t2 = aligned_pair(args.val_t1, args.val_t2, what=("validation T1", "validation T2"))
    t1, t2 = pairs[0] if pairs else (None, None)
    voxel = _voxel(args.voxel_mm)
    config = TrainConfig(
        pairs=tuple(pairs[1:]), phantom_subjects=args.phantom_subjects, randomize=args.randomize,
        augment_copies=args.augment_copies, voxel_mm=voxel,
        t1=t1, t2=t2, val_t1=args.val_t1, val_t2=args.val_t2, out=args.out, model=args.model,
        network=overrides, planes=tuple(check_planes(args.planes)), epochs=args.epochs, epochs_decay=args.epochs_decay,
        lr=args.lr, betas=betas, batch_size=args.batch_size, context=args.context, device=args.device,
        precision=args.precision, seed=args.seed, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        max_steps_per_epoch=args.max_steps_per_epoch, loss_csv=args.loss_csv, augment=args.augment,
        patch=args.patch, prior_cross_fit=defaults["prior_cross_fit"],
        prior_stages=args.prior_stages, correction=args.correction, n4=defaults["n4"] if args.n4 is None else args.n4,
    )
    progress = {"bar": BarProgress(), "json": json_progress(), "none": None}[args.progress]
    cancel = threading.Event()
    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {}
    def request_cancel(signum, frame):
        # The first signal stops at the next step boundary; restoring the old handlers lets a second one interrupt at once.
        cancel.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if threading.current_thread() is threading.main_thread():
        for sig in handled:
            previous[sig] = signal.signal(sig, request_cancel)
    try:
        train(config, progress=progress, cancel_event=cancel)
    except TrainingCancelled as exc:
        if args.progress == "json":
            json_progress()({"event": "cancelled", "message": str(exc)})
        print(f"t1tot2 train: {exc}", file=sys.stderr)
        return 130
    except T1ToT2Error as exc:
        if args.progress == "json":
            json_progress()({"event": "error", "message": str(exc)})
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
