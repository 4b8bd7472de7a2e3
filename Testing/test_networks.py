"""The translation networks: shapes, parameter counts from layer arithmetic, receptive field, training steps, options."""

import json
import math

import pytest
import torch
from T1ToT2Lib import networks
from T1ToT2Lib.core.errors import T1ToT2Error
from T1ToT2Lib.networks.blocks import ImagePool, PatchDiscriminator
from T1ToT2Lib.networks.cyclegan import ResnetGenerator
from T1ToT2Lib.networks.pix2pix import UNetGenerator
from torch import nn

SMALL = {"ngf": 8, "ndf": 8}
SMALL_ARCH = {"pix2pix": {"depth": 4}, "cyclegan": {"n_blocks": 2}, "unit": {"n_blocks": 2, "n_shared": 1}}


def small_config(arch, **overrides):
    return networks.default_config(arch, **{**SMALL, **SMALL_ARCH[arch], **overrides})


# --- parameter counts derived from layer shapes, independent of the code under test ---

def conv(cin, cout, k, bias):
    return cin * cout * k * k + (cout if bias else 0)


def unet_count(cin, cout, ngf, depth):
    """The reference U-Net with batch norm: bias-free convs before a norm, a biased outermost up-conv."""
    ch = [ngf * min(2**i, 8) for i in range(depth)]
    total = conv(cin, ch[0], 4, False)  # outermost down: conv only
    for i in range(1, depth):
        total += conv(ch[i - 1], ch[i], 4, False) + (2 * ch[i] if i < depth - 1 else 0)  # innermost down has no norm
    total += conv(ch[-1], ch[-2], 4, False) + 2 * ch[-2]  # innermost up: not concatenated
    for i in range(1, depth - 1):
        total += conv(2 * ch[i], ch[i - 1], 4, False) + 2 * ch[i - 1]
    return total + conv(2 * ch[0], cout, 4, True)


def resnet_count(cin, cout, ngf, n_blocks):
    """ResNet generator with instance norm (no affine), so every conv has a bias."""
    c4 = 4 * ngf
    down = conv(cin, ngf, 7, True) + conv(ngf, 2 * ngf, 3, True) + conv(2 * ngf, c4, 3, True)
    blocks = n_blocks * 2 * conv(c4, c4, 3, True)
    up = conv(c4, 2 * ngf, 3, True) + conv(2 * ngf, ngf, 3, True) + conv(ngf, cout, 7, True)
    return down + blocks + up


def patchgan_count(cin, ndf, batch_norm=True):
    """n_layers=3: with batch norm the three inner convs lose their bias and gain a scale and a shift per channel."""
    inner = [(ndf, 2 * ndf), (2 * ndf, 4 * ndf), (4 * ndf, 8 * ndf)]
    total = conv(cin, ndf, 4, True) + conv(8 * ndf, 1, 4, True)
    for a, b in inner:
        total += conv(a, b, 4, not batch_norm) + (2 * b if batch_norm else 0)
    return total


def test_unet_parameter_count_matches_the_layer_arithmetic_and_the_reference_figure():
    reference_unet_256 = UNetGenerator(3, 3, ngf=64, depth=8, norm="batch", upsample="transpose", resize_mode="nearest",
                                       dropout=0.5, output="tanh")
    expected = unet_count(3, 3, 64, 8)
    assert networks.count_parameters(reference_unet_256) == expected
    assert round(expected / 1e6, 3) == 54.414  # the reference implementation prints "54.414 M" for unet_256
    paper = networks.build_generator(networks.default_config("pix2pix"))  # 1 → 1 channel, 9 down-samplings (512)
    assert networks.count_parameters(paper) == unet_count(1, 1, 64, 9)


def test_resnet_and_patchgan_parameter_counts_match_the_layer_arithmetic():
    resnet9 = ResnetGenerator(3, 3, ngf=64, n_blocks=9, n_downsampling=2, norm="instance", upsample="transpose",
                              resize_mode="nearest", dropout=0.0, output="tanh")
    assert networks.count_parameters(resnet9) == resnet_count(3, 3, 64, 9)
    assert round(resnet_count(3, 3, 64, 9) / 1e6, 3) == 11.378  # reference: resnet_9blocks "11.378 M"
    paper5 = networks.build_generator(networks.default_config("cyclegan", n_blocks=5))
    assert networks.count_parameters(paper5) == resnet_count(1, 1, 64, 5)
    d = PatchDiscriminator(6, ndf=64, n_layers=3, norm="batch")
    assert networks.count_parameters(d) == patchgan_count(6, 64)
    assert round(patchgan_count(6, 64) / 1e6, 3) == 2.769  # reference pix2pix basic D: "2.769 M"


def test_unit_counts_shared_blocks_once():
    ngf, k = 8, 3
    c = networks.default_config("unit", ngf=ngf, ndf=8, n_blocks=3, n_shared=2, in_channels=k)
    model = networks.build_model(c)
    c4 = 4 * ngf
    res = 2 * conv(c4, c4, 3, True)

    def encoder(cin, n_private):
        return conv(cin, ngf, 7, True) + conv(ngf, 2 * ngf, 4, True) + conv(2 * ngf, c4, 4, True) + n_private * res

    def decoder(cout, n_private):  # resize up-sampling: 3×3 convs
        return n_private * res + conv(c4, 2 * ngf, 3, True) + conv(2 * ngf, ngf, 3, True) + conv(ngf, cout, 7, True)

    generators = encoder(k, 1) + encoder(1, 1) + 2 * res + 2 * res + decoder(k, 1) + decoder(1, 1)
    groups = model.parameter_groups()
    assert sum(p.numel() for p in groups["generator"]) == generators
    assert sum(p.numel() for p in groups["discriminator"]) == patchgan_count(k, 8, False) + patchgan_count(1, 8, False)
    assert networks.count_parameters(model) == generators + patchgan_count(k, 8, False) + patchgan_count(1, 8, False)
    assert networks.count_parameters(model.generator) == encoder(k, 1) + 2 * res + 2 * res + decoder(1, 1)


# --- shapes ---

@pytest.mark.parametrize("arch", networks.ARCHITECTURES)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_generators_map_n_k_h_w_to_n_1_h_w(arch, in_channels):
    for size in (64, 256):
        extra = {"depth": networks.depth_for_size(size)} if arch == "pix2pix" else {}
        c = small_config(arch, in_channels=in_channels, **extra)
        assert size % networks.required_multiple(c) == 0
        g = networks.build_generator(c).eval()
        with torch.no_grad():
            out = g(torch.rand(2, in_channels, size, size))
        assert out.shape == (2, 1, size, size)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", networks.ARCHITECTURES)
def test_non_square_slices_of_the_required_multiple_keep_their_size(arch):
    c = small_config(arch, depth=3) if arch == "pix2pix" else small_config(arch)
    m = networks.required_multiple(c)
    assert m == (8 if arch == "pix2pix" else 4)
    with torch.no_grad():
        out = networks.build_generator(c).eval()(torch.rand(1, 1, 3 * m, 5 * m))
    assert out.shape == (1, 1, 3 * m, 5 * m)
    with pytest.raises(T1ToT2Error, match=f"multiples of {m}") as info:
        networks.build_generator(c)(torch.rand(1, 1, 3 * m, 5 * m + 2))
    assert "\n" not in str(info.value)


def test_paper_unet_at_512_with_nine_downsamplings():
    assert networks.depth_for_size(512) == 9 and networks.depth_for_size(256) == 8
    c = networks.default_config("pix2pix", in_channels=3)
    assert (c["depth"], c["ngf"], networks.required_multiple(c)) == (9, 64, 512)
    g = networks.build_generator(c).eval()
    with torch.no_grad():
        out = g(torch.rand(1, 3, 512, 512))
    assert out.shape == (1, 1, 512, 512) and torch.isfinite(out).all()


# --- discriminator ---

def test_patchgan_receptive_field_is_70_by_layers_and_by_gradient():
    d = PatchDiscriminator(2, ndf=8, n_layers=3, norm="batch").eval()  # eval: batch norm does not mix pixels
    field = 1
    for layer in reversed([m for m in d.modules() if isinstance(m, nn.Conv2d)]):
        field = (field - 1) * layer.stride[0] + layer.kernel_size[0]
    assert field == 70
    x = torch.rand(1, 2, 160, 160, requires_grad=True)
    y = d(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    support = x.grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert int(rows.max() - rows.min() + 1) == 70
    assert int(cols.max() - cols.min() + 1) == 70


def test_too_small_slices_for_the_discriminator_are_a_one_line_error():
    model = networks.build_model(small_config("pix2pix", depth=2))
    with pytest.raises(T1ToT2Error, match="discriminator needs") as info:
        model("generator", torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16))
    assert "\n" not in str(info.value)


# --- one training step per architecture ---

def snapshot(params):
    return [p.detach().clone() for p in params]


def changed(before, params):
    return any(not torch.equal(b, p.detach()) for b, p in zip(before, params))


@pytest.mark.parametrize("arch", networks.ARCHITECTURES)
def test_one_generator_and_discriminator_step_gives_finite_losses_and_updates_both(arch):
    torch.manual_seed(0)
    model = networks.build_model(small_config(arch)).train()
    groups = model.parameter_groups()
    assert groups["generator"] and groups["discriminator"]
    assert not {id(p) for p in groups["generator"]} & {id(p) for p in groups["discriminator"]}
    assert {id(p) for p in model.generator.parameters()} <= {id(p) for p in groups["generator"]}
    optimizers = {name: torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999)) for name, params in groups.items()}
    real_a, real_b = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
    before = {name: snapshot(params) for name, params in groups.items()}
    assert model.phases == ("generator", "discriminator")
    for phase in model.phases:
        loss, logs = model(phase, real_a, real_b)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert logs and all(math.isfinite(v) for v in logs.values())
        model.zero_grad(set_to_none=True)
        loss.backward()
        other = "discriminator" if phase == "generator" else "generator"
        # each phase's loss reaches only its own group: the fakes are detached, D is frozen in the G phase
        assert all(p.grad is None for p in groups[other])
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in groups[phase])
        optimizers[phase].step()
    assert all(p.requires_grad for p in groups["discriminator"])  # unfrozen again
    assert changed(before["generator"], groups["generator"])
    assert changed(before["discriminator"], groups["discriminator"])


def test_discriminator_phase_first_and_bf16_autocast_still_work():
    model = networks.build_model(small_config("pix2pix", in_channels=3))
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    loss, logs = model("discriminator", a, b)  # no stored fakes yet: computed on the fly
    assert torch.isfinite(loss) and set(logs) == {"D_real", "D_fake"}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for phase in model.phases:
            loss, logs = model(phase, a, b)
            loss.backward()
            assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="phase"):
        model("both", a, b)


def test_cyclegan_and_unit_with_2p5d_input_make_a_domain_fakes_with_k_channels():
    for arch in ("cyclegan", "unit"):
        model = networks.build_model(small_config(arch, in_channels=3))
        loss, _ = model("generator", torch.rand(1, 3, 32, 32), torch.rand(1, 1, 32, 32))
        assert torch.isfinite(loss)
        assert model._fakes["fake_a"].shape == (1, 3, 32, 32) and model._fakes["fake_b"].shape == (1, 1, 32, 32)


def test_generator_state_dict_alone_round_trips_into_build_generator():
    for arch in networks.ARCHITECTURES:
        c = small_config(arch, in_channels=3)
        torch.manual_seed(1)
        model = networks.build_model(c)
        fresh = networks.build_generator(json.loads(json.dumps(c)))
        fresh.load_state_dict(model.generator.state_dict(), strict=True)
        x = torch.rand(1, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x), model.generator.eval()(x)), arch


# --- UNIT specifics ---

def test_unit_shared_layers_are_the_same_parameters_in_both_domains():
    model = networks.build_model(small_config("unit"))
    shared = {id(p) for p in model.generator.shared_encoder.parameters()} | {id(p) for p in model.generator.shared_decoder.parameters()}
    assert shared

    def used_by(fn):
        model.zero_grad(set_to_none=True)
        fn().sum().backward()
        return {id(p) for p in model.parameters() if p.grad is not None}

    x = torch.rand(1, 1, 32, 32)
    z = torch.rand(1, 32, 8, 8)
    enc_a, enc_b = used_by(lambda: model.encode_a(x)), used_by(lambda: model.encode_b(x))
    dec_a, dec_b = used_by(lambda: model.decode_a(z)), used_by(lambda: model.decode_b(z))
    shared_encoder = {id(p) for p in model.generator.shared_encoder.parameters()}
    shared_decoder = {id(p) for p in model.generator.shared_decoder.parameters()}
    assert enc_a & enc_b == shared_encoder
    assert dec_a & dec_b == shared_decoder
    assert not {k for k in model.generator.state_dict() if k.startswith(("encoder_b", "decoder_a"))}


def test_unit_inference_decodes_the_latent_mean_without_noise():
    model = networks.build_model(small_config("unit")).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        first, second = model.generator(x), model.generator(x)
        assert torch.equal(first, second)
        assert torch.allclose(first, model.decode_b(model.encode_a(x)))


# --- resize up-sampling: no checkerboard ---

def phase_spread(image: torch.Tensor, border: int) -> float:
    """Variance of the four 2×2-phase means over the interior: large for a checkerboard, ~0 without."""
    y = image[0, 0, border:-border, border:-border].double()
    means = torch.stack([y[p::2, q::2].mean() for p in (0, 1) for q in (0, 1)])
    return float(means.var())


@pytest.mark.parametrize("arch", networks.ARCHITECTURES)
def test_resize_upsampling_leaves_no_checkerboard_on_a_constant_image(arch):
    # Batch norm in eval mode keeps a constant interior constant (instance norm would blow the border effects up);
    # the border wider than the receptive fields' reach keeps zero/reflection padding effects out of the measure.
    spreads = {}
    for upsample in ("transpose", "resize"):
        torch.manual_seed(0)
        config = small_config(arch, upsample=upsample, norm="batch", init_gain=0.2, **({"depth": 3} if arch == "pix2pix" else {}))
        g = networks.build_generator(config).eval()
        with torch.no_grad():
            spreads[upsample] = phase_spread(g(torch.full((1, 1, 128, 128), 0.5)), border=40)
    assert spreads["transpose"] > 1e-8
    assert spreads["resize"] < 1e-6 * spreads["transpose"], spreads


# --- configuration ---

def test_default_configs_are_complete_and_json_serialisable():
    expected = {
        "pix2pix": {"depth": 9, "norm": "batch", "gan_mode": "vanilla", "lambda_l1": 100.0, "dropout": 0.5, "n_layers_d": 3},
        "cyclegan": {"n_blocks": 9, "norm": "instance", "gan_mode": "lsgan", "lambda_cycle": 10.0, "lambda_identity": 0.5, "pool_size": 50},
        "unit": {"gan_mode": "lsgan", "gan_weight": 1.0, "recon_x_weight": 10.0, "recon_kl_weight": 0.01, "cycle_x_weight": 10.0,
                 "cycle_kl_weight": 0.01},
    }
    for arch in networks.ARCHITECTURES:
        c = networks.default_config(arch)
        assert json.loads(json.dumps(c)) == c
        assert {"arch", "in_channels", "ngf", "ndf", "norm", "upsample", "dropout", "pool_size"} <= set(c)
        assert c["arch"] == arch and c["in_channels"] == 1
        assert expected[arch].items() <= c.items()
        assert networks.default_config(arch, in_channels=5, upsample="resize")["in_channels"] == 5


@pytest.mark.parametrize("arch, overrides, named", [
    ("pix2pix", {"n_blocks": 9}, "n_blocks"),
    ("pix2pix", {"colour": "red"}, "colour"),
    ("cyclegan", {"in_channels": 2}, "in_channels"),
    ("unit", {"norm": "group"}, "norm"),
    ("pix2pix", {"upsample": "pixelshuffle"}, "upsample"),
    ("cyclegan", {"ngf": "64"}, "ngf"),
    ("pix2pix", {"depth": 0}, "depth"),
    ("cyclegan", {"lambda_cycle": -1}, "lambda_cycle"),
    ("pix2pix", {"dropout": 1.5}, "dropout"),
    ("unit", {"n_blocks": 1, "n_shared": 2}, "n_shared"),
])
def test_bad_options_are_one_line_errors_naming_the_option(arch, overrides, named):
    with pytest.raises(T1ToT2Error) as info:
        networks.default_config(arch, **overrides)
    message = str(info.value)
    assert named in message and ":" in message and "\n" not in message


def test_unknown_architecture_and_stored_configs_are_checked():
    with pytest.raises(T1ToT2Error, match="pix2pix, cyclegan, unit"):
        networks.default_config("dcgan")
    with pytest.raises(T1ToT2Error, match="arch"):
        networks.build_generator({"ngf": 8})
    with pytest.raises(T1ToT2Error, match="bogus"):
        networks.build_generator({**small_config("cyclegan"), "bogus": 1})
    partial = {"arch": "pix2pix", "ngf": 4, "depth": 3}  # an older file lacking some keys gets the defaults
    assert networks.count_parameters(networks.build_generator(partial)) == networks.count_parameters(
        networks.build_generator(networks.default_config("pix2pix", ngf=4, depth=3)))


def test_lookup_configs_build_the_lookup_translator():
    lookup = pytest.importorskip("T1ToT2Lib.networks.lookup")
    config = {"arch": "lookup", "bins": 8, "t1_max": 2.0, "in_channels": 1}
    assert isinstance(networks.build_generator(config), lookup.LookupTranslator)
    assert networks.required_multiple(config) == 1


def test_image_pool_returns_only_images_it_was_given_and_holds_at_most_its_size():
    torch.manual_seed(0)
    pool = ImagePool(3)
    seen = []
    for step in range(6):
        batch = torch.full((2, 1, 2, 2), float(step)) + torch.arange(2.0).view(2, 1, 1, 1) / 10
        seen += [float(v) for v in batch[:, 0, 0, 0]]
        out = pool.query(batch)
        assert out.shape == batch.shape
        assert all(float(v) in seen for v in out[:, 0, 0, 0])
        assert len(pool.images) <= 3
    assert ImagePool(0).query(batch) is batch


def test_package_import_does_not_import_torch_models():
    import subprocess
    import sys

    code = "import sys, T1ToT2Lib.networks as n; n.default_config('unit'); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_weights_start_normal_with_gain_0_02_and_follow_the_callers_seed():
    config = small_config("pix2pix", ngf=32, depth=5)
    torch.manual_seed(3)
    first = networks.build_generator(config)
    torch.manual_seed(3)
    second = networks.build_generator(config)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    convs = [m for m in first.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    weights = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.02) < 1e-3
    assert all(float(m.bias.detach().abs().max()) == 0 for m in convs if m.bias is not None)
    scales = torch.cat([m.weight.detach() for m in first.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(scales.mean()) - 1) < 0.01 and abs(float(scales.std()) - 0.02) < 0.01
