"""Pix2Pix (Isola et al. 2017): U-Net generator, PatchGAN on (input, output) pairs, GAN + λ·L1."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import GANModel, as_logs, build_discriminator, check_multiple, conv_bias, gan_loss, norm_layer, output_head, upsample_conv


def level_channels(depth: int, ngf: int) -> list[int]:
    """Feature channels after each down-sampling: ngf, 2ngf, 4ngf, then 8ngf for all deeper levels."""
    return [ngf * min(2**level, 8) for level in range(depth)]


class UNetGenerator(nn.Module):
    """A U-Net with ``depth`` 4×4 stride-2 down-samplings and matching up-samplings.

    Level ``i`` maps ``channels[i-1]`` to ``channels[i]`` on the way down
    (LeakyReLU 0.2, conv, norm; no norm at the outermost and innermost
    levels) and back up (ReLU, up-conv, norm, and dropout at the 8ngf levels
    between the fourth and the innermost, as the reference's
    ``num_downs - 5`` dropout blocks); each up-sampled map is concatenated
    with the down path's map of the same size.  An input of (N, in, H, W)
    with H and W multiples of 2**depth gives (N, out, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, *, ngf: int, depth: int, norm: str, upsample: str,
                 resize_mode: str, dropout: float, output: str):
        super().__init__()
        channels = level_channels(depth, ngf)
        bias = conv_bias(norm)
        self.depth = depth
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(depth):
            source = in_channels if level == 0 else channels[level - 1]
            innermost = level == depth - 1
            layers = [] if level == 0 else [nn.LeakyReLU(0.2, True)]
            layers.append(nn.Conv2d(source, channels[level], 4, 2, 1, bias=bias))
            if 0 < level < depth - 1:
                layers.append(norm_layer(norm, channels[level]))
            self.down.append(nn.Sequential(*layers))
        for level in range(depth):
            innermost = level == depth - 1
            incoming = channels[level] * (1 if innermost else 2)
            if level == 0:
                layers = [nn.ReLU(True), upsample_conv(incoming, out_channels, mode=upsample, resize_mode=resize_mode, bias=True),
                          output_head(output)]
            else:
                layers = [nn.ReLU(True), upsample_conv(incoming, channels[level - 1], mode=upsample, resize_mode=resize_mode, bias=bias),
                          norm_layer(norm, channels[level - 1])]
                if dropout > 0 and 4 <= level < depth - 1:
                    layers.append(nn.Dropout(dropout))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x):
        check_multiple(x, 2**self.depth)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for level in range(self.depth - 2, -1, -1):
            x = self.up[level](torch.cat([skips[level], x], 1))
        return x


def build_unet(config: dict, in_channels: int, out_channels: int) -> UNetGenerator:
    return UNetGenerator(
        in_channels, out_channels, ngf=config["ngf"], depth=config["depth"], norm=config["norm"], upsample=config["upsample"],
        resize_mode=config["resize_mode"], dropout=config["dropout"], output=config["output"],
    )


class Pix2PixModel(GANModel):
    """Paired translation: D judges concatenated (T1 stack, T2) pairs; G minimises GAN + lambda_l1·L1 to the acquired T2."""

    def __init__(self, config: dict, generator: nn.Module):
        super().__init__(config)
        self.generator = generator
        self.discriminators["pair"] = build_discriminator(config, config["in_channels"] + 1)

    def generator_step(self, real_a, real_b):
        fake_b = self.generator(real_a)
        adversarial = gan_loss(self.discriminators["pair"](torch.cat([real_a, fake_b], 1)), True, self.config["gan_mode"])
        l1 = F.l1_loss(fake_b.float(), real_b.float())
        self.keep_fakes(real_a, real_b, fake_b=fake_b)
        loss = self.config["gan_weight"] * adversarial + self.config["lambda_l1"] * l1
        return loss, as_logs(G_GAN=adversarial, G_L1=l1)

    def discriminator_step(self, real_a, real_b, fakes):
        d = self.discriminators["pair"]
        fake = gan_loss(d(torch.cat([real_a, fakes["fake_b"].to(real_a.dtype)], 1)), False, self.config["gan_mode"])
        real = gan_loss(d(torch.cat([real_a, real_b], 1)), True, self.config["gan_mode"])
        loss = 0.5 * (fake + real)
        return loss, as_logs(D_real=real, D_fake=fake)
