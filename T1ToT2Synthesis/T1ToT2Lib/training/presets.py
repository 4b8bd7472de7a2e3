"""The product's training defaults: the recommended refiner and the paper's networks, per preset."""

from __future__ import annotations

from ..core.volume import PLANES
from ..inference.slices import DEFAULT_PERCENTILE

#: The configuration this project recommends: the ``refiner`` — gradient-boosted trees on 3-D
#: multi-scale T1 features give a prior T2 (two stages: the second, auto-context stage also reads
#: features of the first stage's estimate), and a small dilated residual CNN (2.5-D input of three
#: T1 slices plus the prior's) corrects it, trained with L1 on all three planes and fused over them
#: at synthesis.  ``training`` holds its optimiser settings (a plain regression network, not a GAN:
#: Adam betas 0.9/0.999, a higher rate decaying linearly to 0, 48-pixel patches centred on the hand,
#: flips; trained on an out-of-fold prior so it learns the errors the trees make on unseen anatomy).
#: ``correction: auto``: the CNN is trained only when a held-out pair can judge it and kept only where it does
#: not lower the prior there; on one pair alone the model is its trees (trained on one phantom hand, the CNN
#: lowered the two-stage trees on the other hand on each of five seeds: README).
#: ``t1tot2 train`` takes it as its default.
RECOMMENDED = {
    "model": "refiner",
    "network": {"norm": "batch"},
    "context": 3,
    "planes": PLANES,
    "synthesis_plane": "fuse",
    "training": {"epochs": 8, "epochs_decay": 8, "lr": 2e-3, "betas": (0.9, 0.999), "batch_size": 16, "augment": True,
                 "patch": 48, "prior_cross_fit": True, "prior_stages": 2, "correction": "auto", "n4": "t1"},
}

#: What ``TrainConfig.n4`` (``t1tot2 train --n4``) accepts: N4 bias-field correction of no volume, of every T1 (the
#: model file records it and synthesis corrects its T1 too), or of every T1 and T2.  The recommended refiner corrects
#: its T1s: a coil field moves tendon's T1 (0.11 of the foreground median) onto cortical bone's (0.10), whose T2 is
#: three times brighter.  The T2 target keeps its field: no T1 can predict it, and what is scored is the acquired T2.
N4_MODES = ("none", "t1", "both")


#: What ``TrainConfig.correction`` (``t1tot2 train --correction``) accepts: whether the refiner's CNN stage is trained.
CORRECTIONS = ("auto", "train", "none")


def correction_trains(model: str, correction: str, judged: bool) -> bool:
    """Whether a run trains the network: always for the GANs and with ``train``; the refiner's CNN stage with ``auto``
    only when ``judged`` (a held-out pair, ``--val-t1/--val-t2`` or a held-out phantom subject, can judge it): trained
    on one hand and scored on the other, the CNN lowered the two-stage trees' PSNR on each of five phantom seeds
    (README), so unjudged it is not worth its cost.  The CLI and the Slicer panel ask this before a run starts."""
    return model != "refiner" or correction == "train" or (correction == "auto" and judged)


#: The foreground percentile each model's T1 and T2 are divided by.  The refiner's trees read absolute normalised
#: intensities, so its scale must not move with the acquisition: a high percentile of the foreground is set by a
#: few small bright structures whose partial volume changes with voxel size and pose, while the median of the
#: foreground (voxels above Otsu's threshold) is set by the bulk of the tissue.  The GANs keep the 99.5th percentile:
#: their tanh output needs targets within [-1, 1].
NORMALISATION_PERCENTILE = {"refiner": 50.0}


def normalisation_percentile(model: str) -> float:
    """The foreground percentile ``model``'s training normalises T1 and T2 by (recorded in the model file)."""
    return float(NORMALISATION_PERCENTILE.get(model, DEFAULT_PERCENTILE))


#: The robust recipe (domain randomization): the recommended refiner trained on the given pair plus
#: ``phantom_subjects`` phantom subjects rendered with randomized acquisitions (voxel 0.6-1.5 mm, noise, coil
#: field, sequence, pose), every pair resampled to ``voxel_mm``; one more subject is held out and the CNN stage is
#: kept only if it does not make the prior worse there.  ``max_steps_per_epoch`` keeps the CNN's cost that of
#: one pair.  TrainConfig fields, applied over :data:`RECOMMENDED`'s.
#: The SPACE protocol stays the paper's: another SPACE is another target, and a T1-only model cannot tell which one
#: is wanted (trees fitted on the demo's hand plus one fully randomized subject lost 1.0 dB on the demo's right hand).
ROBUST = {"phantom_subjects": 2, "randomize": True,
          "phantom_ranges": {"voxel_mm": (0.6, 1.5), "space_TR": (1500.0, 1500.0), "space_TE": (127.0, 127.0)},
          "voxel_mm": (1.5, 1.5, 1.5), "max_steps_per_epoch": 40}


#: The best Pix2Pix of the first round (resize-convolution up-sampling, instance normalisation,
#: 2.5-D input, fusion of the three planes): ``t1tot2 train --model pix2pix`` still defaults to it.
PIX2PIX_IMPROVED = {
    "model": "pix2pix",
    "network": {"upsample": "resize", "norm": "instance"},
    "context": 3,
    "planes": PLANES,
    "synthesis_plane": "fuse",
}


def training_defaults(model: str, preset: str = "recommended") -> dict:
    """What ``t1tot2 train --model MODEL --preset PRESET`` uses before explicit options apply.

    Keys: network, context, epochs, epochs_decay, lr, betas, batch_size, augment, patch, prior_cross_fit,
    prior_stages, correction (these two: TrainConfig's own defaults for the GANs, which have no prior), n4.
    """
    gan = {"epochs": 15, "epochs_decay": 0, "lr": 2e-4, "betas": (0.5, 0.999), "batch_size": 1, "augment": False,
           "patch": None, "prior_cross_fit": True, "prior_stages": 1, "correction": "train", "n4": "none"}
    if model == "refiner":
        return {"network": dict(RECOMMENDED["network"]), "context": RECOMMENDED["context"], **RECOMMENDED["training"]}
    if model == "pix2pix" and preset == "recommended":
        return {"network": dict(PIX2PIX_IMPROVED["network"]), "context": PIX2PIX_IMPROVED["context"], **gan}
    return {"network": {}, "context": 1, **gan}
