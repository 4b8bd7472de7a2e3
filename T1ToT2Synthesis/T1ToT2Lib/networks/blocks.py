"""Small building blocks shared by the three architectures.

Everything here takes its options explicitly (no globals, no defaults hidden in
a factory), after the block structure of the pix2pix/CycleGAN reference
implementation.  Intensities are foreground-normalised floats (about 0 to 1.x),
not [-1, 1], so generators end in a linear head unless ``output="tanh"``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..core.errors import T1ToT2Error

NORMS = ("batch", "instance", "none")
UPSAMPLES = ("transpose", "resize")
RESIZE_MODES = ("nearest", "bilinear")
OUTPUTS = ("linear", "tanh")
GAN_MODES = ("vanilla", "lsgan")
PADDINGS = ("zeros", "reflect")


def norm_layer(kind: str, channels: int) -> nn.Module:
    """Batch norm (learned affine, running statistics), instance norm (no affine, as the reference) or nothing."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "none":
        return nn.Identity()
    raise T1ToT2Error(f"unknown norm {kind!r}: use one of {', '.join(NORMS)}")


def conv_bias(norm: str) -> bool:
    """A convolution followed by batch norm needs no bias (the norm's shift replaces it)."""
    return norm != "batch"


def padded_conv(in_channels: int, out_channels: int, kernel: int, padding: str, bias: bool, stride: int = 1) -> nn.Sequential:
    """A 'same' convolution whose border is zero- or reflection-padded."""
    pad = (kernel - 1) // 2
    if padding == "reflect":
        return nn.Sequential(nn.ReflectionPad2d(pad), nn.Conv2d(in_channels, out_channels, kernel, stride, 0, bias=bias))
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, pad, bias=bias))


def upsample_conv(in_channels: int, out_channels: int, *, mode: str, resize_mode: str, bias: bool,
                  transpose_kernel: int = 4, padding: str = "zeros") -> nn.Module:
    """Double the spatial size.

    ``mode="transpose"``: a stride-2 transposed convolution (the papers' choice;
    ``transpose_kernel`` 4 with padding 1, or 3 with output padding 1 as the
    ResNet reference).  ``mode="resize"``: nearest/bilinear ×2 then a 3×3
    convolution, which cannot produce the checkerboard pattern of uneven
    transposed-convolution overlap (Odena et al. 2016).
    """
    if mode == "transpose":
        if transpose_kernel == 4:
            return nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=bias)
        if transpose_kernel == 3:
            return nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=bias)
        raise ValueError(f"transpose_kernel must be 3 or 4, got {transpose_kernel}")
    if mode == "resize":
        if resize_mode not in RESIZE_MODES:
            raise T1ToT2Error(f"unknown resize_mode {resize_mode!r}: use one of {', '.join(RESIZE_MODES)}")
        upsample = nn.Upsample(scale_factor=2, mode=resize_mode, **({"align_corners": False} if resize_mode == "bilinear" else {}))
        return nn.Sequential(upsample, *padded_conv(in_channels, out_channels, 3, padding, bias))
    raise T1ToT2Error(f"unknown upsample {mode!r}: use one of {', '.join(UPSAMPLES)}")


def check_multiple(x: torch.Tensor, multiple: int) -> None:
    """Refuse, in one line, slices a generator would silently resize or fail on."""
    height, width = x.shape[-2:]
    if height % multiple or width % multiple:
        raise T1ToT2Error(
            f"a {height}x{width} slice does not fit this network: pad height and width to multiples of {multiple} (required_multiple)"
        )


def output_head(kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Identity()
    if kind == "tanh":
        return nn.Tanh()
    raise T1ToT2Error(f"unknown output {kind!r}: use one of {', '.join(OUTPUTS)}")


class ResnetBlock(nn.Module):
    """x + [pad, conv3, norm, ReLU, (dropout), pad, conv3, norm](x)."""

    def __init__(self, channels: int, *, norm: str, dropout: float, padding: str = "reflect"):
        super().__init__()
        bias = conv_bias(norm)
        layers = [*padded_conv(channels, channels, 3, padding, bias), norm_layer(norm, channels), nn.ReLU(True)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [*padded_conv(channels, channels, 3, padding, bias), norm_layer(norm, channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, each seeing a fixed input patch.

    ``n_layers=3`` gives the 70×70 receptive field of pix2pix: a 4×4 stride-2
    convolution without norm, ``n_layers - 1`` more stride-2 ones with norm,
    then two 4×4 stride-1 ones (the last to one channel).
    """

    def __init__(self, in_channels: int, *, ndf: int, n_layers: int, norm: str):
        super().__init__()
        bias = conv_bias(norm)
        layers = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers):
            out = ndf * min(2**n, 8)
            layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2, True)]
            channels = out
        out = ndf * min(2**n_layers, 8)
        layers += [nn.Conv2d(channels, out, 4, 1, 1, bias=bias), norm_layer(norm, out), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(out, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        self.min_size = smallest_input(self.model)

    def forward(self, x):
        if min(x.shape[-2:]) < self.min_size:
            raise T1ToT2Error(
                f"slices of {x.shape[-2]}x{x.shape[-1]} pixels are smaller than the {self.min_size} pixels the discriminator needs: "
                "train on larger slices or lower n_layers_d"
            )
        return self.model(x)


def smallest_input(model: nn.Sequential) -> int:
    """The smallest square input size for which every convolution of ``model`` leaves at least one pixel."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    size = 1
    while True:
        s = size
        for conv in convs:
            s = (s + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
            if s < 1:
                break
        if s >= 1:
            return size
        size += 1


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchGANs on the image and on its 2×, 4×… average-pooled versions (UNIT/pix2pixHD style)."""

    def __init__(self, in_channels: int, *, ndf: int, n_layers: int, norm: str, scales: int):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, ndf=ndf, n_layers=n_layers, norm=norm) for _ in range(scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x) -> list:
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index:
                x = self.downsample(x)
            outputs.append(discriminator(x))
        return outputs


def build_discriminator(config: dict, in_channels: int) -> MultiScaleDiscriminator:
    """The configured discriminator for images of ``in_channels`` channels (``d_scales`` PatchGANs)."""
    return MultiScaleDiscriminator(in_channels, ndf=config["ndf"], n_layers=config["n_layers_d"], norm=config["norm_d"], scales=config["d_scales"])


def gan_loss(predictions, target_is_real: bool, mode: str) -> torch.Tensor:
    """Vanilla (BCE on logits) or least-squares GAN loss, summed over discriminator scales."""
    if not isinstance(predictions, (list, tuple)):
        predictions = [predictions]
    total = 0.0
    for prediction in predictions:
        prediction = prediction.float()
        target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
        if mode == "vanilla":
            total = total + F.binary_cross_entropy_with_logits(prediction, target)
        elif mode == "lsgan":
            total = total + F.mse_loss(prediction, target)
        else:
            raise T1ToT2Error(f"unknown gan_mode {mode!r}: use one of {', '.join(GAN_MODES)}")
    return total


class ImagePool:
    """A history of generated images (Shrivastava et al. 2017), as CycleGAN's reference.

    Until ``size`` images are stored, each new image is stored and returned;
    afterwards, with probability 1/2 a stored image is returned and replaced
    by the new one.  Draws use torch's generator, so ``torch.manual_seed``
    makes a run repeatable.  Not part of the state dict: a resumed run starts
    with an empty pool.
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        chosen = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                chosen.append(image)
            elif torch.rand(()).item() > 0.5:
                index = int(torch.randint(0, self.size, ()).item())
                chosen.append(self.images[index].clone())
                self.images[index] = image
            else:
                chosen.append(image)
        return torch.cat(chosen, 0)


def init_weights(module: nn.Module, gain: float = 0.02) -> nn.Module:
    """Normal(0, gain) convolution weights, zero biases, norm scales Normal(1, gain): the reference's 'normal' init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)
    return module


class requires_grad_off:
    """Context: freeze ``modules``' parameters (saves their weight gradients during the generator phase)."""

    def __init__(self, *modules: nn.Module):
        self.params = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        self.saved = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.saved):
            p.requires_grad_(flag)


class GANModel(nn.Module):
    """One module holding a translation model's generators, discriminators and losses.

    ``forward(phase, real_a, real_b)`` returns ``(loss, {name: float})`` for the
    ``"generator"`` or ``"discriminator"`` phase, so DistributedDataParallel can
    wrap the whole model.  The generator phase keeps the detached fakes that
    the next discriminator phase judges; ``phases`` gives the order to run
    them in.  ``generator`` is exactly the module :func:`build_generator`
    makes, so its state dict alone is a model file's weights.
    """

    phases = ("generator", "discriminator")

    def __init__(self, config: dict):
        super().__init__()
        self.config = dict(config)
        self.discriminators = nn.ModuleDict()
        self._fakes: dict | None = None

    def parameter_groups(self) -> dict:
        discriminator = list(self.discriminators.parameters())
        ids = {id(p) for p in discriminator}
        return {"generator": [p for p in self.parameters() if id(p) not in ids], "discriminator": discriminator}

    def forward(self, phase: str, real_a: torch.Tensor, real_b: torch.Tensor):
        if phase == "generator":
            with requires_grad_off(self.discriminators):
                loss, logs = self.generator_step(real_a, real_b)
            return loss, logs
        if phase == "discriminator":
            fakes = self._fakes
            if fakes is None or fakes["shape"] != (tuple(real_a.shape), tuple(real_b.shape)):
                with torch.no_grad():
                    self.generator_step(real_a, real_b)
                fakes = self._fakes
            self._fakes = None
            return self.discriminator_step(real_a, real_b, fakes)
        raise ValueError(f"phase must be 'generator' or 'discriminator', got {phase!r}")

    def keep_fakes(self, real_a, real_b, **fakes):
        self._fakes = {"shape": (tuple(real_a.shape), tuple(real_b.shape)), **{k: v.detach() for k, v in fakes.items()}}

    def generator_step(self, real_a, real_b):  # pragma: no cover - abstract
        raise NotImplementedError

    def discriminator_step(self, real_a, real_b, fakes):  # pragma: no cover - abstract
        raise NotImplementedError


def centre_channel(x: torch.Tensor) -> torch.Tensor:
    """The slice to translate from a 2.5D stack of an odd number of neighbouring slices."""
    middle = x.shape[1] // 2
    return x[:, middle : middle + 1]


def as_logs(**values) -> dict:
    return {name: float(value.detach()) for name, value in values.items()}
