"""``t1tot2 bench``: speed and memory of the paths users wait on, as ratios measured in one run.

The speed of these shared machines varies about 3x from day to day, so every figure that matters is a
ratio inside one run:

* **ceilings**: the matrix-multiply rate in float32 and bfloat16 (float16 on CUDA);
* **synthesis** of the paper's U-Net (``default_config("pix2pix")``, depth log2(size)) at each size and
  precision through the real hot loop (:func:`T1ToT2Lib.inference.synthesize._predict_plane`): slices/s, s per
  volume, achieved GFLOP/s (:class:`torch.utils.flop_counter.FlopCounterMode`), the fraction of that
  precision's ceiling, user and system CPU time, and the speed-up over a **naive** loop measured in the
  same run (batch 1, float32, ``no_grad`` instead of inference mode, per-slice numpy conversion);
* the **quality cost** of bfloat16: PSNR against the acquired T2 of the phantom's right hand, bf16 minus fp32;
* **training** s/step for Pix2Pix, CycleGAN and UNIT (and the recommended refiner), fast path
  (channels-last, the automatic precision) against the naive float32 step, same batch;
* **peak memory** of synthesising a 512×512×491 volume, in a fresh process so the peak is its own;
* the **product path** (:mod:`.product_bench`): the recommended refiner trained on the phantom's left hand and
  run on its right hand (full: the paper's 0.6 mm grid), per stage, each in a fresh process, with
  "seconds x GFLOP/s" (seconds times this run's float32 matmul rate) so days compare.

A precision the device does not run natively (bfloat16 on a CPU without AVX512-BF16/AMX, where it is
emulated and hundreds of times slower) gets its ceiling measured on a small matrix and its heavy cases
skipped, with the reason in the table and JSON.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

from .product_bench import peak_rss_gb, run_child


#: smoke: seconds (CI); quick: 256 only, a few minutes; full: 256 and 512, the issue's figures
#: (under 15 minutes on 2 CPU cores).  "paper" is the old name of "full".
PRESETS = {
    "smoke": {"sizes": (32,), "ngf": 4, "slices": 4, "batch": 2, "repeats": 1, "matmul_size": 256,
              "train_archs": ("pix2pix", "cyclegan", "unit", "refiner"), "train_sizes": (32,), "train_small": True,
              "volume_shape": (12, 64, 64), "volume_ngf": 4, "psnr_ngf": 4, "psnr_steps": 3},
    "quick": {"sizes": (256,), "ngf": 32, "slices": 8, "batch": 8, "repeats": 2, "matmul_size": 2048,
              "train_archs": ("pix2pix", "cyclegan", "unit", "refiner"), "train_sizes": (256,), "train_small": False,
              "volume_shape": (491, 512, 512), "volume_ngf": 8, "psnr_ngf": 8, "psnr_steps": 30},
    "full": {"sizes": (256, 512), "ngf": 64, "slices": 8, "batch": 8, "repeats": 2, "matmul_size": 4096,
             "train_archs": ("pix2pix", "cyclegan", "unit", "refiner"), "train_sizes": (256, 512), "train_small": False,
             "volume_shape": (491, 512, 512), "volume_ngf": 16, "psnr_ngf": 16, "psnr_steps": 60},
}
PRESETS["paper"] = PRESETS["full"]
#: Only Pix2Pix is trained at 512 (CycleGAN and UNIT at 512 take minutes per step on 2 cores).
TRAIN_512_ARCHS = ("pix2pix",)
#: Top-level keys every bench JSON has (issue 10).
SUMMARY_KEYS = ("matmul_gflops_fp32", "matmul_gflops_bf16", "synthesis_fraction_of_ceiling", "synthesis_speedup_vs_naive",
                "bf16_psnr_delta_db", "train_speedup_vs_naive", "synthesis_volume_peak_rss_gb")
#: The product's keys (issue 19): the recommended model on a phantom hand, trained and run in fresh processes;
#: "gflop_s_product" = seconds x the float32 matmul rate of the same run, comparable across days.
PRODUCT_KEYS = ("product_synthesis_s", "product_synthesis_peak_rss_gb", "product_synthesis_gflop_s_product",
                "product_train_s", "product_train_peak_rss_gb", "product_train_gflop_s_product")
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def matmul_gflops(size: int = 2048, dtype: str = "float32", repeats: int = 3, device=None) -> float:
    """The machine's matrix-multiply rate (GFLOP/s, best of ``repeats``) with torch's current threads.

    The speed of these shared machines varies about 3x from day to day, so every time the project
    reports is stated beside this figure.  ``device`` (default the CPU) may be a CUDA device.
    """
    import torch

    device = torch.device(device or "cpu")
    a = torch.randn(size, size, device=device).to(getattr(torch, dtype))
    b = torch.randn(size, size, device=device).to(getattr(torch, dtype))
    a @ b  # warm-up: thread pool and kernels
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _cpu_times():
    times = os.times()  # user and system CPU of this process, on every platform
    return times.user, times.system


def _time(fn, device, repeats):
    """(median seconds, user CPU s, system CPU s, FLOPs) over ``repeats`` calls after one warm-up call,
    which runs under :class:`~torch.utils.flop_counter.FlopCounterMode` to count the FLOPs."""
    flops = _flops(fn)  # the warm-up: allocator, oneDNN/cuDNN kernel selection
    _sync(device)
    times = []
    u0, s0 = _cpu_times()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    u1, s1 = _cpu_times()
    return statistics.median(times), (u1 - u0) / repeats, (s1 - s0) / repeats, flops


def _flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _native(device, precision) -> bool:
    from ..core.devices import native_bf16

    if precision == "fp32":
        return True
    if precision == "fp16":
        return device.type == "cuda"
    return native_bf16(device)


def _unet_config(size, ngf, **extra):
    from ..networks import default_config, depth_for_size

    return default_config("pix2pix", ngf=ngf, ndf=ngf, depth=depth_for_size(size), **extra)


# --- ceilings -----------------------------------------------------------------------------
def measure_ceilings(device, precisions, size):
    out = {}
    for precision in precisions:
        native = _native(device, precision)
        n = size if native else min(size, 256)  # emulated bf16 runs at ~1 GFLOP/s: a small probe says so
        out[precision] = {"gflops": matmul_gflops(n, _TORCH_DTYPES[precision], repeats=3 if native else 1, device=device),
                          "size": n, "native": native}
    return out


# --- synthesis ------------------------------------------------------------------------------
def naive_synthesis(generator, volume, out):
    """How a straightforward script does it: one slice at a time, float32, no_grad, numpy per slice."""
    import torch

    for i in range(volume.shape[0]):
        x = torch.from_numpy(volume[i][None, None].astype(np.float32))
        with torch.no_grad():
            y = generator(x)
        out[i] = y.detach().cpu().numpy()[0, 0]
    return out


def fast_synthesis(generator, volume, out, multiple, device, precision, batch):
    """The library's hot loop (:func:`T1ToT2Lib.inference.synthesize._predict_plane`) over axis 0."""
    from ..inference.synthesize import _predict_plane

    out[...] = 0
    _predict_plane(generator, volume, 0, 1, multiple, device, precision, batch, out, lambda n: None, None)
    return out


def bench_synthesis(device, cfg, precisions, ceilings, emit):
    import torch

    from ..networks import build_generator, required_multiple
    from ..inference.synthesize import inference_generator

    rows = []
    rng = np.random.default_rng(0)
    for size in cfg["sizes"]:
        config = _unet_config(size, cfg["ngf"])
        torch.manual_seed(0)
        generator = inference_generator(build_generator(config).to(device))
        multiple = required_multiple(config)
        volume = rng.random((cfg["slices"], size, size), dtype=np.float32)
        out = np.zeros_like(volume)
        n = volume.shape[0]
        emit(f"synthesis {size}: naive fp32")
        naive_s, naive_u, naive_sys, flops = _time(lambda: naive_synthesis(generator, volume, out), device, cfg["repeats"])
        reference = out.copy()
        rows.append(_synthesis_row(size, "fp32", "naive", n, naive_s, flops, ceilings, naive_u, naive_sys, None))
        for precision in precisions:
            if not _native(device, precision):
                rows.append({"case": "synthesis", "size": size, "precision": precision, "path": "fast",
                             "skipped": f"{precision} is not native on {device.type} (emulated)"})
                continue
            emit(f"synthesis {size}: fast {precision}")
            run = lambda: fast_synthesis(generator, volume, out, multiple, device, precision, cfg["batch"])  # noqa: E731
            seconds, user, system, _ = _time(run, device, cfg["repeats"])
            row = _synthesis_row(size, precision, "fast", n, seconds, flops, ceilings, user, system, naive_s)
            row["max_abs_diff_vs_naive"] = float(np.abs(out - reference).max())
            rows.append(row)
    return rows


def _synthesis_row(size, precision, path, n, seconds, flops, ceilings, user, system, naive_seconds):
    rate = flops / seconds / 1e9
    return {"case": "synthesis", "size": size, "precision": precision, "path": path, "slices": n,
            "seconds": seconds, "slices_per_s": n / seconds, "s_per_slice": seconds / n,
            "s_per_491_slice_volume": seconds / n * 491, "gflop_per_slice": flops / n / 1e9, "gflops_per_s": rate,
            "fraction_of_ceiling": rate / ceilings[precision]["gflops"], "user_cpu_s": user, "system_cpu_s": system,
            "speedup_vs_naive": (naive_seconds / seconds) if naive_seconds else None}


# --- quality cost of reduced precision ------------------------------------------------------------
def bf16_quality(device, cfg, emit):
    """PSNR (vs the acquired T2 of the phantom's right hand, axial plane) of a briefly trained small
    U-Net in bf16 minus fp32.  Run even where bf16 is emulated: the network is small."""
    import torch

    from ..inference.slices import foreground_scale
    from ..core.metrics import psnr
    from ..networks import build_generator, required_multiple
    from ..phantom.render import make_phantom
    from ..inference.synthesize import _predict_plane, inference_generator

    emit("bf16 quality: phantom")
    phantom = make_phantom("small", seed=0)
    pairs = {}
    for side in ("left", "right"):
        t1, t2 = phantom[f"{side}_t1"], phantom[f"{side}_t2"]
        axis = t1.plane_axis("axial")
        pairs[side] = (np.moveaxis(t1.array / np.float32(foreground_scale(t1.array)), axis, 0).astype(np.float32),
                       np.moveaxis(t2.array / np.float32(foreground_scale(t2.array)), axis, 0).astype(np.float32))
    size = max(pairs["left"][0].shape[1:])
    config = _unet_config(size, cfg["psnr_ngf"], norm="instance", upsample="resize", dropout=0.0)
    multiple = required_multiple(config)
    torch.manual_seed(0)
    generator = build_generator(config).to(device).train()
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    a, b = pairs["left"]
    h, w = a.shape[1:]
    ph, pw = -h % multiple, -w % multiple
    pad = lambda x: np.pad(x, [(0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)], mode="edge")  # noqa: E731
    rng = np.random.default_rng(0)
    emit(f"bf16 quality: {cfg['psnr_steps']} L1 steps on the left hand")
    for _ in range(cfg["psnr_steps"]):
        idx = rng.choice(a.shape[0], size=4, replace=False)
        x = torch.from_numpy(pad(a[idx][:, None])).to(device)
        y = torch.from_numpy(pad(b[idx][:, None])).to(device)
        loss = (generator(x) - y).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    generator = inference_generator(generator.eval())
    t1, t2 = pairs["right"]
    outputs = {}
    for precision in ("fp32", "bf16"):
        emit(f"bf16 quality: right hand in {precision}")
        out = np.zeros_like(t1)
        _predict_plane(generator, t1, 0, 1, multiple, device, precision, 8, out, lambda n: None, None)
        outputs[precision] = np.maximum(out, 0)
    scores = {p: psnr(v, t2) for p, v in outputs.items()}
    return {"model": f"U-Net ngf {cfg['psnr_ngf']} depth {config['depth']}, briefly trained ({cfg['psnr_steps']} L1 steps "
                     "of 4 axial slices of the phantom's left hand), randomly initialised before that",
            "psnr_fp32_db": scores["fp32"], "psnr_bf16_db": scores["bf16"], "delta_db": scores["bf16"] - scores["fp32"],
            "psnr_bf16_vs_fp32_output_db": psnr(outputs["bf16"], outputs["fp32"]), "bf16_native": _native(device, "bf16")}


# --- training -------------------------------------------------------------------------------
def _train_config(arch, size, cfg):
    from ..training.presets import RECOMMENDED
    from ..networks import default_config

    ngf = cfg["ngf"]
    if arch == "pix2pix":
        return _unet_config(size, ngf), 1
    small = cfg["train_small"]
    if arch == "refiner":
        context = RECOMMENDED["context"]
        overrides = {"in_channels": context, **RECOMMENDED["network"], **({"ngf": 4, "n_layers": 2} if small else {})}
        return default_config("refiner", **overrides), int(RECOMMENDED["training"]["batch_size"])
    extra = {"n_blocks": 1} if small else {}
    return default_config(arch, ngf=ngf, ndf=ngf, **extra), 1


def train_step_fn(model, optimizers, real_a, real_b, device, precision):
    from ..core.devices import autocast_context

    phases = [p for p in getattr(model, "phases", ("discriminator", "generator")) if p in optimizers]

    def step():
        for phase in phases:
            with autocast_context(device, precision):
                loss, _ = model(phase, real_a, real_b)
            optimizers[phase].zero_grad(set_to_none=True)
            loss.backward()
            optimizers[phase].step()

    return step


def _training_setup(config, batch, size, device, channels_last):
    import torch

    from ..networks import build_model

    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizers = {name: torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))
                  for name, params in model.parameter_groups().items() if params}
    in_channels = config["in_channels"] * (2 if config["arch"] == "refiner" else 1)
    g = torch.Generator().manual_seed(1)
    real_a = torch.rand(batch, in_channels, size, size, generator=g).to(device)
    real_b = torch.rand(batch, 1, size, size, generator=g).to(device)
    if channels_last:
        real_a, real_b = (t.contiguous(memory_format=torch.channels_last) for t in (real_a, real_b))
    return model, optimizers, real_a, real_b


def bench_training(device, cfg, precisions, ceilings, fast_precision, emit):
    rows = []
    for size in cfg["train_sizes"]:
        archs = cfg["train_archs"] if size == min(cfg["train_sizes"]) else [a for a in cfg["train_archs"] if a in TRAIN_512_ARCHS]
        for arch in archs:
            config, batch = _train_config(arch, size, cfg)
            emit(f"training {arch} {size}: naive fp32")
            model, optimizers, a, b = _training_setup(config, batch, size, device, channels_last=False)
            repeats = cfg["repeats"] if arch in ("pix2pix", "refiner") else 1  # CycleGAN/UNIT: ~1 TFLOP a step
            naive_s, _, _, flops = _time(train_step_fn(model, optimizers, a, b, device, "fp32"), device, repeats)
            del model, optimizers
            rows.append(_train_row(arch, size, batch, "fp32", "naive", naive_s, flops, ceilings, None))
            for precision in precisions:
                if precision == "fp16" or not _native(device, precision):  # training in fp16 needs loss scaling
                    continue
                emit(f"training {arch} {size}: fast {precision}")
                model, optimizers, a, b = _training_setup(config, batch, size, device, channels_last=True)
                seconds, _, _, _ = _time(train_step_fn(model, optimizers, a, b, device, precision), device, repeats)
                del model, optimizers
                rows.append(_train_row(arch, size, batch, precision, "fast", seconds, flops, ceilings, naive_s))
    return rows


def _train_row(arch, size, batch, precision, path, seconds, flops, ceilings, naive_seconds):
    rate = flops / seconds / 1e9
    return {"case": "train step", "arch": arch, "size": size, "batch": batch, "precision": precision, "path": path,
            "seconds": seconds, "gflop_per_step": flops / 1e9, "gflops_per_s": rate,
            "fraction_of_ceiling": rate / ceilings[precision]["gflops"],
            "speedup_vs_naive": (naive_seconds / seconds) if naive_seconds else None}


# --- peak memory of a whole volume, in a child process ---------------------------------------------
def _volume_child(spec: dict) -> dict:
    """Run in a fresh process: synthesise a volume of ``spec['shape']`` (axial slices of the last two
    sizes) through :func:`synthesize_volume` and report its own peak RSS."""
    import numpy as np
    import torch

    from ..core.devices import resolve_device
    from ..networks.modelfile import LoadedModel
    from ..networks import build_generator, required_multiple
    from ..inference.synthesize import synthesize_volume
    from ..core.volume import Volume

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device = resolve_device(spec["device"])
    rss_after_imports = peak_rss_gb()
    n, h, w = spec["shape"]
    probe = Volume(np.zeros((2, 2, 2), np.float32), np.eye(4), {})
    shape = [h, h, h]
    shape[probe.plane_axis("axial")] = n
    others = [i for i in range(3) if i != probe.plane_axis("axial")]
    shape[others[1]] = w
    rng = np.random.default_rng(0)
    t1 = Volume((rng.random(tuple(shape), dtype=np.float32) * 100 + 1), np.eye(4), {})
    config = _unet_config(max(h, w), spec["ngf"])
    torch.manual_seed(0)
    loaded = LoadedModel(generator=build_generator(config).eval(), config=config, metadata={}, planes=["axial"],
                         in_channels=1, t2_scale=1.0, t1_percentile=99.0, multiple=required_multiple(config), name="bench")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    u0, s0 = _cpu_times()
    t0 = time.perf_counter()
    synthesize_volume(loaded, t1, plane="axial", device=device, precision=spec["precision"], batch_size=spec["batch"])
    seconds = time.perf_counter() - t0
    u1, s1 = _cpu_times()
    return {"shape": list(t1.shape), "axial_slices": f"{n}x{h}x{w}", "model": f"U-Net ngf {spec['ngf']} depth {config['depth']}",
            "precision": spec["precision"], "batch": spec["batch"], "seconds": seconds, "user_cpu_s": u1 - u0,
            "system_cpu_s": s1 - s0, "peak_rss_gb": peak_rss_gb(),
            "rss_after_imports_gb": rss_after_imports,
            "gpu_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}


def bench_volume(device, cfg, precision, emit, threads=0):
    spec = {"shape": list(cfg["volume_shape"]), "ngf": cfg["volume_ngf"], "precision": precision,
            "batch": cfg["batch"], "device": str(device), "threads": threads}
    emit(f"volume {spec['shape']} in a fresh process")
    return run_child("volume", spec)


# --- the whole run ------------------------------------------------------------------------------
def run_benchmarks(preset="full", device="auto", precisions=None, train=True, volume=True, progress=None, threads=0,
                   product=True, work="bench_work", product_size=None, product_cnn_steps=None):
    """Everything the bench measures: a dict with the summary keys (:data:`SUMMARY_KEYS`, :data:`PRODUCT_KEYS`)
    and the details.  ``product``: train and run the recommended model on the phantom hand of ``product_size``
    (default: the preset's) in fresh processes, the phantom cached in ``work``."""
    import torch

    from ..core.devices import auto_precision, resolve_device

    cfg = PRESETS[preset]
    dev = resolve_device(device)
    emit = progress or (lambda message: None)
    if precisions is None:
        precisions = ("fp32", "bf16", "fp16") if dev.type == "cuda" else ("fp32", "bf16")
    precisions = tuple(precisions)
    default = auto_precision(dev)
    started = time.perf_counter()
    emit("matmul ceilings")
    ceilings = measure_ceilings(dev, sorted(set(precisions) | {"fp32", "bf16"}), cfg["matmul_size"])
    synthesis = bench_synthesis(dev, cfg, precisions, ceilings, emit)
    quality = bf16_quality(dev, cfg, emit)
    training = bench_training(dev, cfg, precisions, ceilings, default, emit) if train else []
    vol = bench_volume(dev, cfg, default, emit, threads) if volume else None
    products = None
    if product:
        from .product_bench import run_product

        products = run_product(work, preset, product_size, device=str(dev), precision=default, emit=emit, cnn_steps=product_cnn_steps)

    def pick(rows, **match):
        found = [r for r in rows if all(r.get(k) == v for k, v in match.items()) and "skipped" not in r]
        return found[-1] if found else None

    top = max(cfg["sizes"])
    synth_default = pick(synthesis, size=top, precision=default, path="fast")
    train_default = pick(training, arch="pix2pix", size=max(cfg["train_sizes"]), precision=default, path="fast")
    result = {
        "matmul_gflops_fp32": ceilings["fp32"]["gflops"],
        "matmul_gflops_bf16": ceilings["bf16"]["gflops"],
        "synthesis_fraction_of_ceiling": synth_default["fraction_of_ceiling"] if synth_default else None,
        "synthesis_speedup_vs_naive": synth_default["speedup_vs_naive"] if synth_default else None,
        "bf16_psnr_delta_db": quality["delta_db"],
        "train_speedup_vs_naive": train_default["speedup_vs_naive"] if train_default else None,
        "synthesis_volume_peak_rss_gb": (vol or {}).get("peak_rss_gb"),
        **product_summary(products, ceilings["fp32"]["gflops"]),
        "default_precision": default,
        "summary_case": {"synthesis": f"U-Net {top}x{top} {default}", "train": f"pix2pix {max(cfg['train_sizes'])} {default}"},
        "ceilings": ceilings,
        "synthesis": synthesis,
        "bf16_quality": quality,
        "training": training,
        "volume": vol,
        "product": products,
        "info": {"preset": preset, **{k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
                 "device": str(dev), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu_capability": getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", lambda: None)(),
                 "machine": platform.processor() or platform.machine(),
                 "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
                 "seconds": time.perf_counter() - started},
    }
    return result


def product_summary(products, gflops: float) -> dict:
    """The :data:`PRODUCT_KEYS` (None where not measured)."""
    out = dict.fromkeys(PRODUCT_KEYS)
    for stage in ("synthesis", "train"):
        run = (products or {}).get(stage) or {}
        if "seconds" in run:
            out[f"product_{stage}_s"] = run["seconds"]
            out[f"product_{stage}_peak_rss_gb"] = run["peak_rss_gb"]
            out[f"product_{stage}_gflop_s_product"] = run["seconds"] * gflops
    return out


def _product_lines(products, result) -> list:
    if not products:
        return []
    lines = [f"product: recommended refiner, {products['size']} phantom hand ({products.get('phantom')})"
             + (" (training cut to 1 epoch of 2 steps, 10 trees per fit)" if products.get("quick_training") else "")
             + (f" (CNN training cut to 1 epoch of {products['cnn_steps']} steps; trees in full)" if products.get("cnn_steps") else "")]
    for stage in ("train", "synthesis"):
        run = products.get(stage) or {}
        if "error" in run:
            lines.append(f"  {stage}: failed ({run['error']})")
            continue
        parts = ", ".join(f"{name} {_f(value, '.1f')}" for name, value in run["stages_s"].items())
        lines.append(f"  {stage} {run['seconds']:.1f} s = {result[f'product_{stage}_gflop_s_product']:,.0f} s x GFLOP/s, "
                     f"peak RSS {run['peak_rss_gb']:.2f} GB (after imports {run['rss_after_imports_gb']:.2f}), CPU {run['cpu_s']:.0f} s")
        lines.append(f"    stages (s): {parts}" + (f"; trees by {run['tree_engine']}" if run.get("tree_engine") else ""))
    return lines


def _f(value, fmt):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, fmt)


def format_table(result) -> str:
    lines = []
    info = result["info"]
    lines.append(f"t1tot2 bench: preset {info['preset']}, device {info['device']} ({info['cpu_capability'] or info['cuda']}), "
                 f"torch {info['torch']}, {info['threads']} threads, {info['seconds']:.0f} s")
    lines.append("ceilings (matmul GFLOP/s): " + ", ".join(
        f"{p} {_f(c['gflops'], '.1f')} ({c['size']}², {'native' if c['native'] else 'EMULATED'})" for p, c in result["ceilings"].items()))
    header = f"{'case':10} {'arch':8} {'size':>4} {'prec':4} {'path':5} {'s/unit':>8} {'units/s':>8} {'GFLOP/s':>8} {'%ceil':>6} {'xnaive':>6} {'user s':>7} {'sys s':>6}"
    lines += [header, "-" * len(header)]
    for r in result["synthesis"]:
        if "skipped" in r:
            lines.append(f"{'synthesis':10} {'unet':8} {r['size']:4d} {r['precision']:4} {r['path']:5} skipped: {r['skipped']}")
            continue
        lines.append(f"{'synthesis':10} {'unet':8} {r['size']:4d} {r['precision']:4} {r['path']:5} {r['s_per_slice']:8.3f} "
                     f"{r['slices_per_s']:8.2f} {r['gflops_per_s']:8.1f} {100 * r['fraction_of_ceiling']:5.0f}% "
                     f"{_f(r['speedup_vs_naive'], '6.2f'):>6} {r['user_cpu_s']:7.2f} {r['system_cpu_s']:6.2f}")
    for r in result["training"]:
        lines.append(f"{'train':10} {r['arch']:8} {r['size']:4d} {r['precision']:4} {r['path']:5} {r['seconds']:8.3f} "
                     f"{r['batch'] / r['seconds']:8.2f} {r['gflops_per_s']:8.1f} {100 * r['fraction_of_ceiling']:5.0f}% "
                     f"{_f(r['speedup_vs_naive'], '6.2f'):>6}")
    lines.append("(synthesis: s/unit = s per slice, units/s = slices/s; train: s per step, samples/s; "
                 "user/sys = CPU s per timed pass of the synthesis loop)")
    q = result["bf16_quality"]
    lines.append(f"bf16 quality: PSNR fp32 {q['psnr_fp32_db']:.3f} dB, bf16 {q['psnr_bf16_db']:.3f} dB, delta "
                 f"{q['delta_db']:+.4f} dB (bf16 vs fp32 output {q['psnr_bf16_vs_fp32_output_db']:.1f} dB); {q['model']}")
    v = result["volume"]
    if v and "error" not in v:
        gpu = f", GPU peak {v['gpu_peak_gb']:.2f} GB" if v.get("gpu_peak_gb") is not None else ""
        lines.append(f"volume {v['axial_slices']} ({v['model']}, {v['precision']}, batch {v['batch']}): {v['seconds']:.1f} s, "
                     f"peak RSS {v['peak_rss_gb']:.2f} GB (after imports {v['rss_after_imports_gb']:.2f}){gpu}, "
                     f"user {v['user_cpu_s']:.1f} s, system {v['system_cpu_s']:.1f} s")
    elif v:
        lines.append(f"volume: failed ({v['error']})")
    lines += _product_lines(result.get("product"), result)
    lines.append("summary: " + ", ".join(f"{k} {_f(result[k], '.3f')}" for k in SUMMARY_KEYS + PRODUCT_KEYS)
                 + f" (default precision {result['default_precision']})")
    return "\n".join(lines)


def _child_tasks() -> dict:
    from . import product_bench

    return {"volume": _volume_child, "allocate": product_bench.allocate_child, "product_synthesis": product_bench.synthesis_child,
            "product_train": product_bench.train_child}


if __name__ == "__main__":  # the fresh process of run_child: python -m T1ToT2Lib.research.bench --child TASK SPEC
    if len(sys.argv) == 4 and sys.argv[1] == "--child" and sys.argv[2] in _child_tasks():
        print(json.dumps(_child_tasks()[sys.argv[2]](json.loads(sys.argv[3]))))
        sys.exit(0)
    sys.exit("usage: python -m T1ToT2Lib.research.bench --child volume|allocate|product_synthesis|product_train SPEC")
