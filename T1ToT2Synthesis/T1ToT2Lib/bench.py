"""``t1tot2 bench``: speed and memory of the paths users wait on, as a table and JSON.

Each case times a warm-up-free median of a few repeats, counts the case's
FLOPs with :class:`torch.utils.flop_counter.FlopCounterMode`, and reports the
achieved rate next to the floor of docs/performance.md (FLOPs ÷ the machine's measured
matrix rate for that precision), so a regression shows as a falling
"% of peak" rather than as a raw time that depends on the machine.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time

from .atomic import write_json

#: Presets: "quick" runs in about a minute on 2 CPU cores; "paper" is the paper's 512×512 geometry.
PRESETS = {
    "quick": {"size": 256, "ngf": 32, "depth": 8, "repeats": 3, "n_blocks": 9},
    "paper": {"size": 512, "ngf": 64, "depth": 9, "repeats": 3, "n_blocks": 9},
}


def matmul_gflops(size: int = 2048, dtype: str = "float32", repeats: int = 3) -> float:
    """The machine's matrix-multiply rate (GFLOP/s, best of ``repeats``) with torch's current threads.

    The speed of these shared machines varies about 3x from day to day, so every time the project
    reports is stated beside this figure.
    """
    import torch

    a = torch.randn(size, size, dtype=getattr(torch, dtype))
    b = torch.randn(size, size, dtype=getattr(torch, dtype))
    a @ b  # warm-up: thread pool and kernels
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9

def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, repeats):
    fn()  # warm-up: allocator, oneDNN/cuDNN kernel selection
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops(fn):
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _peak_memory_mb(device):
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_benchmarks(preset="quick", device="auto", precisions=("fp32", "bf16"), archs=("pix2pix", "cyclegan", "unit"), train=True):
    """Return a list of result rows (dicts)."""
    import torch

    from .devices import autocast_context, resolve_device
    from .networks import build_generator, build_model, default_config

    cfg = PRESETS[preset]
    dev = resolve_device(device)
    size = cfg["size"]
    rows = []

    def record(case, arch, precision, seconds, flops, per):
        rows.append(
            {
                "case": case,
                "arch": arch,
                "precision": precision,
                "size": size,
                "seconds": seconds,
                "per": per,
                "gflop": flops / 1e9,
                "gflops_per_s": flops / seconds / 1e9 if seconds > 0 else float("nan"),
                "peak_memory_mb": _peak_memory_mb(dev),
            }
        )

    for arch in archs:
        overrides = {"ngf": cfg["ngf"]}
        if arch == "pix2pix":
            overrides["depth"] = cfg["depth"]
        if arch == "cyclegan":
            overrides["n_blocks"] = cfg["n_blocks"]
        config = default_config(arch, **overrides)
        torch.manual_seed(0)
        generator = build_generator(config).to(dev).eval()
        x = torch.rand(1, config["in_channels"], size, size, device=dev)
        for precision in precisions:
            def forward():
                with torch.inference_mode(), autocast_context(dev, precision):
                    generator(x)

            flops = _flops(forward)
            record("synthesize slice", arch, precision, _time(forward, dev, cfg["repeats"]), flops, "slice")
        if train:
            model = build_model(config).to(dev).train()
            groups = model.parameter_groups()
            opt_g = torch.optim.Adam(groups["generator"], lr=2e-4, betas=(0.5, 0.999))
            opt_d = torch.optim.Adam(groups["discriminator"], lr=2e-4, betas=(0.5, 0.999))
            b = torch.rand(1, 1, size, size, device=dev)
            for precision in precisions:
                def step():
                    with autocast_context(dev, precision):
                        loss_g, _ = model("generator", x, b)
                    opt_g.zero_grad(set_to_none=True)
                    loss_g.backward()
                    opt_g.step()
                    with autocast_context(dev, precision):
                        loss_d, _ = model("discriminator", x, b)
                    opt_d.zero_grad(set_to_none=True)
                    loss_d.backward()
                    opt_d.step()

                flops = _flops(step)
                record("train step", arch, precision, _time(step, dev, cfg["repeats"]), flops, "step (batch 1)")
    return rows, {"device": str(dev), "preset": preset, **cfg, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "machine": platform.processor() or platform.machine(), "cuda": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None}


def format_table(rows) -> str:
    header = f"{'case':18} {'arch':9} {'prec':5} {'size':>5} {'seconds':>9} {'GFLOP':>8} {'GFLOP/s':>8} {'peak MB':>8}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['case']:18} {r['arch']:9} {r['precision']:5} {r['size']:5d} {r['seconds']:9.3f} "
            f"{r['gflop']:8.1f} {r['gflops_per_s']:8.1f} {r['peak_memory_mb']:8.0f}"
        )
    return "\n".join(lines)


def _run(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    archs = tuple(a.strip() for a in args.archs.split(",") if a.strip())
    precisions = tuple(p.strip() for p in args.precision.split(",") if p.strip())
    rows, info = run_benchmarks(args.preset, args.device, precisions, archs, train=not args.no_train)
    print(f"t1tot2 bench: preset {info['preset']} ({info['size']}×{info['size']}, ngf {info['ngf']}), "
          f"device {info['device']}, torch {info['torch']}, {info['threads']} threads")
    print(format_table(rows))
    if args.json:
        write_json({"info": info, "results": rows}, args.json)
        print(f"wrote {args.json}")
    return 0


def register_cli(subparsers):
    p = subparsers.add_parser("bench", help="time synthesis and training steps; print a table and write JSON")
    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="quick: 256² ngf 32; paper: 512² ngf 64, 9 down-samplings")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--precision", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    p.add_argument("--archs", default="pix2pix,cyclegan,unit")
    p.add_argument("--no-train", action="store_true", help="time synthesis only")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", default="bench.json", help="where to write the results (default bench.json)")
    p.set_defaults(func=_run)
