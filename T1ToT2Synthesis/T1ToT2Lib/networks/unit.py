"""UNIT (Liu, Breuel and Kautz 2017): coupled VAE-GANs with a shared latent space.

Each domain has an encoder and a decoder.  The encoders' last ``n_shared``
residual blocks are one module used by both (so T1 and T2 slices of the same
anatomy are pushed to one code), and so are the decoders' first ``n_shared``
blocks.  The shared encoder's output is the latent mean; training adds Gaussian
noise of unit variance, and the KL term is mean(mu²), as the reference
implementation.  Inference (:class:`UNITTranslator`) decodes the mean itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .blocks import GANModel, ImagePool, ResnetBlock, as_logs, build_discriminator, check_multiple, conv_bias, gan_loss, norm_layer, output_head, padded_conv, upsample_conv


def _encoder(config: dict, in_channels: int, n_private: int) -> nn.Sequential:
    """7×7 conv, ``n_downsampling`` 4×4 stride-2 convs, then the domain's own residual blocks."""
    norm, ngf, bias = config["norm"], config["ngf"], conv_bias(config["norm"])
    layers = [*padded_conv(in_channels, ngf, 7, "reflect", bias), norm_layer(norm, ngf), nn.ReLU(True)]
    channels = ngf
    for _ in range(config["n_downsampling"]):
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels * 2, 4, 2, 0, bias=bias), norm_layer(norm, channels * 2), nn.ReLU(True)]
        channels *= 2
    layers += [ResnetBlock(channels, norm=norm, dropout=config["dropout"]) for _ in range(n_private)]
    return nn.Sequential(*layers)


def _decoder(config: dict, out_channels: int, n_private: int) -> nn.Sequential:
    """The domain's own residual blocks, ``n_downsampling`` up-samplings, then a 7×7 conv to the image."""
    norm, bias = config["norm"], conv_bias(config["norm"])
    channels = config["ngf"] * 2 ** config["n_downsampling"]
    layers = [ResnetBlock(channels, norm=norm, dropout=config["dropout"]) for _ in range(n_private)]
    for _ in range(config["n_downsampling"]):
        layers += [
            upsample_conv(channels, channels // 2, mode=config["upsample"], resize_mode=config["resize_mode"], bias=bias, padding="reflect"),
            norm_layer(norm, channels // 2),
            nn.ReLU(True),
        ]
        channels //= 2
    layers += [*padded_conv(channels, out_channels, 7, "reflect", True), output_head(config["output"])]
    return nn.Sequential(*layers)


def _shared_blocks(config: dict) -> nn.Sequential:
    channels = config["ngf"] * 2 ** config["n_downsampling"]
    return nn.Sequential(*(ResnetBlock(channels, norm=config["norm"], dropout=config["dropout"]) for _ in range(config["n_shared"])))


class UNITTranslator(nn.Module):
    """The T1→T2 path: encoder A, shared encoder blocks (latent mean), shared decoder blocks, decoder B."""

    def __init__(self, encoder_a: nn.Module, shared_encoder: nn.Module, shared_decoder: nn.Module, decoder_b: nn.Module, *,
                 multiple: int):
        super().__init__()
        self.encoder_a = encoder_a
        self.shared_encoder = shared_encoder
        self.shared_decoder = shared_decoder
        self.decoder_b = decoder_b
        self.multiple = multiple

    @classmethod
    def build(cls, config: dict) -> UNITTranslator:
        n_private = config["n_blocks"] - config["n_shared"]
        return cls(_encoder(config, config["in_channels"], n_private), _shared_blocks(config), _shared_blocks(config),
                   _decoder(config, 1, n_private), multiple=2 ** config["n_downsampling"])

    def forward(self, x):
        check_multiple(x, self.multiple)
        return self.decoder_b(self.shared_decoder(self.shared_encoder(self.encoder_a(x))))


class UNITModel(GANModel):
    """Both VAE-GANs.  Generator loss (reference weights in the config):

    gan·(GAN_a + GAN_b) + recon_x·(|x̂_a - a| + |x̂_b - b|) + recon_kl·(KL_a + KL_b)
    + cycle_x·(|x_aba - a| + |x_bab - b|) + cycle_kl·(KL_ab + KL_ba),

    with reconstructions and translations decoded from mean + N(0, 1) noise.
    """

    def __init__(self, config: dict):
        super().__init__(config)
        k = config["in_channels"]
        n_private = config["n_blocks"] - config["n_shared"]
        self.generator = UNITTranslator.build(config)
        self.encoder_b = _encoder(config, 1, n_private)
        self.decoder_a = _decoder(config, k, n_private)
        self.discriminators["a"] = build_discriminator(config, k)
        self.discriminators["b"] = build_discriminator(config, 1)
        self.pool_a = ImagePool(config["pool_size"])
        self.pool_b = ImagePool(config["pool_size"])

    def encode_a(self, x):
        return self.generator.shared_encoder(self.generator.encoder_a(x))

    def encode_b(self, x):
        return self.generator.shared_encoder(self.encoder_b(x))

    def decode_a(self, z):
        return self.decoder_a(self.generator.shared_decoder(z))

    def decode_b(self, z):
        return self.generator.decoder_b(self.generator.shared_decoder(z))

    @staticmethod
    def sample(mu):
        return mu + torch.randn_like(mu)

    @staticmethod
    def kl(mu):
        return torch.mean(mu.float() ** 2)

    def generator_step(self, real_a, real_b):
        c = self.config
        mu_a, mu_b = self.encode_a(real_a), self.encode_b(real_b)
        z_a, z_b = self.sample(mu_a), self.sample(mu_b)
        recon_a, recon_b = self.decode_a(z_a), self.decode_b(z_b)
        fake_a, fake_b = self.decode_a(z_b), self.decode_b(z_a)
        mu_ba, mu_ab = self.encode_a(fake_a), self.encode_b(fake_b)
        cycle_a, cycle_b = self.decode_a(self.sample(mu_ab)), self.decode_b(self.sample(mu_ba))
        terms = {
            "G_GAN_a": gan_loss(self.discriminators["a"](fake_a), True, c["gan_mode"]),
            "G_GAN_b": gan_loss(self.discriminators["b"](fake_b), True, c["gan_mode"]),
            "recon_x_a": F.l1_loss(recon_a.float(), real_a.float()),
            "recon_x_b": F.l1_loss(recon_b.float(), real_b.float()),
            "kl_a": self.kl(mu_a),
            "kl_b": self.kl(mu_b),
            "cycle_x_a": F.l1_loss(cycle_a.float(), real_a.float()),
            "cycle_x_b": F.l1_loss(cycle_b.float(), real_b.float()),
            "cycle_kl_ab": self.kl(mu_ab),
            "cycle_kl_ba": self.kl(mu_ba),
        }
        loss = (
            c["gan_weight"] * (terms["G_GAN_a"] + terms["G_GAN_b"])
            + c["recon_x_weight"] * (terms["recon_x_a"] + terms["recon_x_b"])
            + c["recon_kl_weight"] * (terms["kl_a"] + terms["kl_b"])
            + c["cycle_x_weight"] * (terms["cycle_x_a"] + terms["cycle_x_b"])
            + c["cycle_kl_weight"] * (terms["cycle_kl_ab"] + terms["cycle_kl_ba"])
        )
        self.keep_fakes(real_a, real_b, fake_a=fake_a, fake_b=fake_b)
        return loss, as_logs(**terms)

    def discriminator_step(self, real_a, real_b, fakes):
        mode = self.config["gan_mode"]
        fake_a = self.pool_a.query(fakes["fake_a"]).to(real_a.dtype)
        fake_b = self.pool_b.query(fakes["fake_b"]).to(real_b.dtype)
        d_a, d_b = self.discriminators["a"], self.discriminators["b"]
        loss_a = gan_loss(d_a(fake_a), False, mode) + gan_loss(d_a(real_a), True, mode)
        loss_b = gan_loss(d_b(fake_b), False, mode) + gan_loss(d_b(real_b), True, mode)
        return self.config["gan_weight"] * (loss_a + loss_b), as_logs(D_a=loss_a, D_b=loss_b)
