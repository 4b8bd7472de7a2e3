"""The recommended network: a residual CNN that corrects a feature-regression prior.

Input is (N, 2·context, H, W): ``context`` normalised T1 slices, then the same slices of the
prior, i.e. the boosted trees' T2 prediction (:mod:`T1ToT2Lib.networks.feature_regression`), computed
from 3-D multi-scale features of the whole T1 volume.  The network adds a learned correction to
the prior's centre slice, on the object and a rim around it (where its loss trains it; in the air it
leaves the prior as it is); its last layer starts at zero, so an untrained refiner *is* the prior
and every step can only learn what the trees missed (edges, partial volume, thin shells).

The body is a stack of 3×3 convolutions with dilations 1, 2, 4, 8, …, 1: a receptive field of
about 2·(1+2+4+8+1)+3 ≈ 35 pixels (5 cm at 1.5 mm, 2 cm at 0.6 mm) — the paper found ~1 cm of
context enough — at full resolution, with no down-sampling and so no grid artefacts.  It trains
with L1 only, over the object and a rim around it: the target is the expected T2, and a GAN loss
would add texture that is not there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import GANModel, as_logs, norm_layer


#: Normalised intensity above which a pixel counts as object (air's Rician noise is about 0.01 to 0.02).
FOREGROUND_LEVEL = 0.05


def object_region(prior: torch.Tensor) -> torch.Tensor:
    """1 on the prior's object and a 2-pixel rim, else 0: where the CNN's L1 loss trains its correction.  Elsewhere
    (air) the correction was never trained, so the refiner leaves the prior there."""
    return F.max_pool2d((prior > FOREGROUND_LEVEL).to(prior.dtype), 5, stride=1, padding=2)


def dilations(n_layers: int) -> list[int]:
    """1, 2, 4, 8, 8, ..., then 1: growing context, a final full-resolution layer."""
    return [min(2 ** i, 8) for i in range(max(1, n_layers - 1))] + [1]


class RefinerGenerator(nn.Module):
    #: Trained with batches of several slices, so batch norm's running statistics describe a slice well;
    #: synthesis keeps them (eval mode) instead of per-slice statistics.
    uses_running_statistics = True

    def __init__(self, context: int, width: int, n_layers: int, norm: str):
        super().__init__()
        self.context = int(context)
        layers = [nn.Conv2d(2 * self.context, width, 3, padding=1), nn.ReLU(inplace=True)]
        for d in dilations(n_layers):
            layers += [nn.Conv2d(width, width, 3, padding=d, dilation=d, bias=norm == "none"),
                       norm_layer(norm, width), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, 1, 1)

    def reset_head(self):
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        prior = x[:, self.context + self.context // 2: self.context + self.context // 2 + 1]
        return prior + self.head(self.body(x)) * object_region(prior)


class PriorPassthrough(nn.Module):
    """The feature-regression baseline as a generator: returns the prior's centre slice unchanged."""

    def __init__(self, context: int = 1):
        super().__init__()
        self.context = int(context)

    def forward(self, x):
        c = self.context + self.context // 2
        return x[:, c:c + 1]


class RefinerModel(GANModel):
    """Training module of the refiner: one phase, L1 to the acquired T2 (no discriminator)."""

    phases = ("generator",)

    def __init__(self, config: dict, generator: RefinerGenerator):
        super().__init__(config)
        self.generator = generator

    def generator_step(self, real_a, real_b):
        fake_b = self.generator(real_a).float()
        real_b = real_b.float()
        # L1 over the object and a rim around it: most of a slice is air, whose Rician noise nobody
        # can predict and whose share of the loss would only dilute what the network learns.
        c = self.generator.context
        prior = real_a[:, c + c // 2: c + c // 2 + 1].float()
        inside = ((real_b > FOREGROUND_LEVEL) | (prior > FOREGROUND_LEVEL)).float()
        inside = F.max_pool2d(inside, 5, stride=1, padding=2)
        l1 = ((fake_b - real_b).abs() * inside).sum() / inside.sum().clamp_min(1.0)
        return self.config["lambda_l1"] * l1, as_logs(G_L1=l1)

    def discriminator_step(self, real_a, real_b, fakes):  # pragma: no cover - the refiner has no discriminator
        raise RuntimeError("the refiner has no discriminator phase")


def build_refiner(config: dict) -> RefinerGenerator:
    return RefinerGenerator(config["in_channels"], config["ngf"], config["n_layers"], config["norm"])
