"""The translation networks: Pix2Pix, CycleGAN and UNIT, built from one JSON-serialisable config.

Intensity convention: inputs are T1 slices divided by a robust foreground
statistic, targets are T2 slices normalised the same way, so both are floats
of about 0 to 1.x.  Generators therefore end in a linear head by default
(``output="tanh"`` restores the papers' [-1, 1] head).

Input is (N, in_channels, H, W): one slice, or an odd number of neighbouring
slices whose centre one is translated (2.5D).  Output is (N, 1, H, W).  H and
W must be multiples of :func:`required_multiple`.

Importing this package does not import torch; the builders do.
"""

from __future__ import annotations

import math

from ..core.errors import T1ToT2Error

#: The paper's translation GANs.
ARCHITECTURES = ("pix2pix", "cyclegan", "unit")
#: Everything ``t1tot2 train`` trains: the recommended refiner and the GANs.
TRAINABLE = ("refiner", *ARCHITECTURES)
#: Models that are fitted, not trained by the GAN loop; they still run as generators at synthesis.
FITTED = ("lookup", "feature_regression")

_COMMON = {
    "in_channels": 1,
    "ngf": 64,
    "ndf": 64,
    "n_layers_d": 3,
    "d_scales": 1,
    "resize_mode": "nearest",
    "output": "linear",
    "init_gain": 0.02,
    "gan_weight": 1.0,
}

_DEFAULTS = {
    "refiner": {
        **_COMMON,
        "ngf": 32,
        "n_layers": 6,
        "norm": "batch",
        "dropout": 0.0,
        "lambda_l1": 1.0,
        "prior": "feature_regression",
        "pool_size": 0,
    },
    "pix2pix": {
        **_COMMON,
        "depth": 9,
        "norm": "batch",
        "norm_d": "batch",
        "upsample": "transpose",
        "dropout": 0.5,
        "gan_mode": "vanilla",
        "lambda_l1": 100.0,
        "pool_size": 0,
    },
    "cyclegan": {
        **_COMMON,
        "n_blocks": 9,
        "n_downsampling": 2,
        "norm": "instance",
        "norm_d": "instance",
        "upsample": "transpose",
        "dropout": 0.0,
        "gan_mode": "lsgan",
        "lambda_cycle": 10.0,
        "lambda_identity": 0.5,
        "pool_size": 50,
    },
    "unit": {
        **_COMMON,
        "n_blocks": 4,
        "n_shared": 1,
        "n_downsampling": 2,
        "norm": "instance",
        "norm_d": "none",
        "upsample": "resize",
        "dropout": 0.0,
        "gan_mode": "lsgan",
        "recon_x_weight": 10.0,
        "recon_kl_weight": 0.01,
        "cycle_x_weight": 10.0,
        "cycle_kl_weight": 0.01,
        "pool_size": 0,
    },
}

_CHOICES = {
    "norm": ("batch", "instance", "none"),
    "norm_d": ("batch", "instance", "none"),
    "upsample": ("transpose", "resize"),
    "resize_mode": ("nearest", "bilinear"),
    "output": ("linear", "tanh"),
    "gan_mode": ("vanilla", "lsgan"),
    "prior": ("feature_regression",),
}
_MINIMUM_INT = {"in_channels": 1, "ngf": 1, "ndf": 1, "n_layers_d": 1, "d_scales": 1, "depth": 1, "n_blocks": 0,
                "n_downsampling": 0, "n_shared": 1, "pool_size": 0, "n_layers": 1}


def depth_for_size(size: int) -> int:
    """U-Net down-samplings for a square slice of ``size`` pixels: log2(size) (9 at 512, as the paper)."""
    size = int(size)
    if size < 2:
        raise T1ToT2Error(f"slice size {size} is too small for a U-Net: use slices of at least 2 pixels")
    return max(1, math.ceil(math.log2(size)))


def default_config(arch: str, **overrides) -> dict:
    """Every parameter of ``arch`` with the papers' defaults, updated by ``overrides`` and checked."""
    if arch not in _DEFAULTS:
        raise T1ToT2Error(f"unknown network architecture {arch!r}: use one of {', '.join(TRAINABLE)}")
    config = {"arch": arch, **_DEFAULTS[arch]}
    unknown = sorted(set(overrides) - set(config))
    if unknown:
        raise T1ToT2Error(
            f"unknown {arch} network option(s) {', '.join(unknown)}: use only {', '.join(sorted(k for k in config if k != 'arch'))}"
        )
    if overrides.get("arch", arch) != arch:
        raise T1ToT2Error(f"config says arch {overrides['arch']!r} but {arch!r} was asked for: pass one architecture")
    config.update(overrides)
    _check(config)
    return config


def _check(config: dict) -> None:
    arch = config["arch"]
    for key, value in config.items():
        default = _DEFAULTS[arch].get(key)
        if key == "arch":
            continue
        if key in _CHOICES:
            if value not in _CHOICES[key]:
                raise T1ToT2Error(f"{arch} option {key}={value!r} is not valid: use one of {', '.join(_CHOICES[key])}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < _MINIMUM_INT.get(key, 0):
                raise T1ToT2Error(f"{arch} option {key}={value!r} is not valid: give a whole number of at least {_MINIMUM_INT.get(key, 0)}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise T1ToT2Error(f"{arch} option {key}={value!r} is not valid: give a finite number of at least 0")
            config[key] = float(value)
    if config["in_channels"] % 2 == 0:
        raise T1ToT2Error(f"in_channels={config['in_channels']} is even: give an odd number of slices so one is the centre")
    if config["dropout"] >= 1:
        raise T1ToT2Error(f"dropout={config['dropout']} is not a probability below 1: use e.g. 0.5 or 0")
    if arch == "unit" and config["n_shared"] > config["n_blocks"]:
        raise T1ToT2Error(f"unit n_shared={config['n_shared']} exceeds n_blocks={config['n_blocks']}: share at most n_blocks residual blocks")


def _complete(config: dict) -> dict:
    """A config as stored in a model file, checked and completed with defaults for keys it lacks."""
    if not isinstance(config, dict) or "arch" not in config:
        raise T1ToT2Error("network config has no 'arch': give one of " + ", ".join(TRAINABLE))
    rest = {k: v for k, v in config.items() if k != "arch"}
    return default_config(config["arch"], **rest)


def required_multiple(config: dict) -> int:
    """What slice height and width must be padded to a multiple of."""
    arch = config.get("arch")
    if arch in FITTED:
        return 1
    config = _complete(config)
    if arch == "refiner":
        return 1
    if arch == "pix2pix":
        return 2 ** config["depth"]
    return 2 ** config["n_downsampling"]


def build_generator(config: dict):
    """The T1→T2 inference network alone: (N, in_channels, H, W) → (N, 1, H, W), initialised Normal(0, init_gain)."""
    if isinstance(config, dict) and config.get("arch") == "lookup":
        from .lookup import LookupTranslator

        return LookupTranslator(config)
    if isinstance(config, dict) and config.get("arch") == "feature_regression":
        from .refiner import PriorPassthrough

        return PriorPassthrough(int(config.get("in_channels", 1)))
    config = _complete(config)
    from .blocks import init_weights

    generator = _GENERATORS[config["arch"]](config)
    if config["arch"] == "refiner":
        # PyTorch's default (Kaiming-uniform) initialisation: a deep plain CNN without normalisation
        # would start with vanishing activations from Normal(0, 0.02) weights.  The head starts at
        # zero so the untrained refiner returns its prior.
        generator.reset_head()
        return generator
    return init_weights(generator, config["init_gain"])


def build_model(config: dict):
    """The training module (:class:`GANModel`): generator(s), discriminators and losses."""
    config = _complete(config)
    from .blocks import init_weights

    if config["arch"] == "refiner":
        model = _MODELS["refiner"](config)
        model.generator.reset_head()  # training starts from the prior itself (see build_generator)
        return model
    model = _MODELS[config["arch"]](config)
    return init_weights(model, config["init_gain"])


def uses_prior(config: dict) -> bool:
    """Whether the network's input carries the feature-regression prior's slices after the T1 slices."""
    return isinstance(config, dict) and (config.get("arch") == "feature_regression" or bool(config.get("prior")))


def _pix2pix_generator(config):
    from .pix2pix import build_unet

    return build_unet(config, config["in_channels"], 1)


def _pix2pix_model(config):
    from .pix2pix import Pix2PixModel

    return Pix2PixModel(config, _pix2pix_generator(config))


def _cyclegan_generator(config):
    from .cyclegan import build_resnet

    return build_resnet(config, config["in_channels"], 1)


def _cyclegan_model(config):
    from .cyclegan import CycleGANModel

    return CycleGANModel(config)


def _unit_generator(config):
    from .unit import UNITTranslator

    return UNITTranslator.build(config)


def _unit_model(config):
    from .unit import UNITModel

    return UNITModel(config)


def _refiner_generator(config):
    from .refiner import build_refiner

    return build_refiner(config)


def _refiner_model(config):
    from .refiner import RefinerModel

    return RefinerModel(config, _refiner_generator(config))


_GENERATORS = {"refiner": _refiner_generator, "pix2pix": _pix2pix_generator, "cyclegan": _cyclegan_generator, "unit": _unit_generator}
_MODELS = {"refiner": _refiner_model, "pix2pix": _pix2pix_model, "cyclegan": _cyclegan_model, "unit": _unit_model}


def count_parameters(module) -> int:
    """Number of distinct parameters of ``module`` (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())


def init_weights(module, gain: float = 0.02):
    """Normal(0, gain) weights as the reference; seed with ``torch.manual_seed`` beforehand."""
    from .blocks import init_weights as _init

    return _init(module, gain)


def __getattr__(name):
    if name == "GANModel":
        from .blocks import GANModel

        return GANModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
