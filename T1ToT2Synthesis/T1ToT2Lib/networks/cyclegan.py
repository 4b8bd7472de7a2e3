"""CycleGAN (Zhu et al. 2017): two ResNet generators, two PatchGANs, LSGAN, cycle and identity losses, image pools.

Domain A is T1 (``in_channels`` slices), domain B is T2 (one slice).  The two
domains are treated as unpaired even when the batches are pairs.
"""

from __future__ import annotations

from torch import nn
from torch.nn import functional as F

from .blocks import GANModel, ImagePool, ResnetBlock, as_logs, build_discriminator, centre_channel, check_multiple, conv_bias, gan_loss, norm_layer, output_head, padded_conv, upsample_conv


class ResnetGenerator(nn.Module):
    """7×7 conv, ``n_downsampling`` stride-2 3×3 convs, ``n_blocks`` residual blocks, as many up-samplings, 7×7 conv.

    Reflection padding, ``norm`` after every inner convolution, ReLU.  The
    paper used 5 residual blocks, the reference implementation 9.
    """

    def __init__(self, in_channels: int, out_channels: int, *, ngf: int, n_blocks: int, n_downsampling: int, norm: str,
                 upsample: str, resize_mode: str, dropout: float, output: str):
        super().__init__()
        bias = conv_bias(norm)
        layers = [*padded_conv(in_channels, ngf, 7, "reflect", bias), norm_layer(norm, ngf), nn.ReLU(True)]
        channels = ngf
        for _ in range(n_downsampling):
            layers += [nn.Conv2d(channels, channels * 2, 3, 2, 1, bias=bias), norm_layer(norm, channels * 2), nn.ReLU(True)]
            channels *= 2
        layers += [ResnetBlock(channels, norm=norm, dropout=dropout, padding="reflect") for _ in range(n_blocks)]
        for _ in range(n_downsampling):
            layers += [
                upsample_conv(channels, channels // 2, mode=upsample, resize_mode=resize_mode, bias=bias, transpose_kernel=3, padding="reflect"),
                norm_layer(norm, channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [*padded_conv(channels, out_channels, 7, "reflect", True), output_head(output)]
        self.model = nn.Sequential(*layers)
        self.multiple = 2**n_downsampling

    def forward(self, x):
        check_multiple(x, self.multiple)
        return self.model(x)


def build_resnet(config: dict, in_channels: int, out_channels: int) -> ResnetGenerator:
    return ResnetGenerator(
        in_channels, out_channels, ngf=config["ngf"], n_blocks=config["n_blocks"], n_downsampling=config["n_downsampling"],
        norm=config["norm"], upsample=config["upsample"], resize_mode=config["resize_mode"], dropout=config["dropout"],
        output=config["output"],
    )


class CycleGANModel(GANModel):
    """``generator`` maps A→B (T1→T2), ``generator_b`` B→A; ``discriminators["b"]`` judges B images, ``["a"]`` A stacks.

    Generator loss: LSGAN terms, lambda_cycle·(|G_B(G_A(a)) - a| + |G_A(G_B(b)) - b|), and
    lambda_identity·lambda_cycle·(|G_A(b) - b| + |G_B(a) - a|).  With a 2.5D input of k
    slices, the identity input to G_A is ``b`` repeated k times (a stack of equal
    neighbours) and G_B's identity input is the centre slice of ``a``.
    """

    def __init__(self, config: dict):
        super().__init__(config)
        k = config["in_channels"]
        self.generator = build_resnet(config, k, 1)
        self.generator_b = build_resnet(config, 1, k)
        self.discriminators["b"] = build_discriminator(config, 1)
        self.discriminators["a"] = build_discriminator(config, k)
        self.pool_a = ImagePool(config["pool_size"])
        self.pool_b = ImagePool(config["pool_size"])

    def generator_step(self, real_a, real_b):
        c = self.config
        fake_b = self.generator(real_a)
        rec_a = self.generator_b(fake_b)
        fake_a = self.generator_b(real_b)
        rec_b = self.generator(fake_a)
        gan_a = gan_loss(self.discriminators["b"](fake_b), True, c["gan_mode"])
        gan_b = gan_loss(self.discriminators["a"](fake_a), True, c["gan_mode"])
        cycle_a = F.l1_loss(rec_a.float(), real_a.float())
        cycle_b = F.l1_loss(rec_b.float(), real_b.float())
        loss = c["gan_weight"] * (gan_a + gan_b) + c["lambda_cycle"] * (cycle_a + cycle_b)
        logs = {"G_A": gan_a, "G_B": gan_b, "cycle_A": cycle_a, "cycle_B": cycle_b}
        if c["lambda_identity"] > 0:
            identity_b = self.generator(real_b.expand(-1, real_a.shape[1], -1, -1))
            identity_a = self.generator_b(centre_channel(real_a))
            idt_a = F.l1_loss(identity_b.float(), real_b.float())
            idt_b = F.l1_loss(identity_a.float(), real_a.float())
            loss = loss + c["lambda_identity"] * c["lambda_cycle"] * (idt_a + idt_b)
            logs.update(idt_A=idt_a, idt_B=idt_b)
        self.keep_fakes(real_a, real_b, fake_a=fake_a, fake_b=fake_b)
        return loss, as_logs(**logs)

    def discriminator_step(self, real_a, real_b, fakes):
        mode = self.config["gan_mode"]
        fake_b = self.pool_b.query(fakes["fake_b"]).to(real_b.dtype)
        fake_a = self.pool_a.query(fakes["fake_a"]).to(real_a.dtype)
        d_b, d_a = self.discriminators["b"], self.discriminators["a"]
        loss_b = 0.5 * (gan_loss(d_b(real_b), True, mode) + gan_loss(d_b(fake_b), False, mode))
        loss_a = 0.5 * (gan_loss(d_a(real_a), True, mode) + gan_loss(d_a(fake_a), False, mode))
        return self.config["gan_weight"] * (loss_a + loss_b), as_logs(D_A=loss_b, D_B=loss_a)
