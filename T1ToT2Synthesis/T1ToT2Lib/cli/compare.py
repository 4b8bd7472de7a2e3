"""``t1tot2 compare``: its arguments, checked and handed to the library."""

from __future__ import annotations

from ..research.compare import (
    BUDGETS,
    MODELS,
    run_comparison,
)


# --- command line ---------------------------------------------------------------------
def register_cli(subparsers):
    p = subparsers.add_parser(
        "compare",
        help="train Pix2Pix, CycleGAN, UNIT, the look-up baseline and the recommended config on the phantom; write an HTML report",
    )
    p.add_argument("out", metavar="OUTDIR", help="output folder (index.html, figures/, models/, volumes/, metrics.csv)")
    p.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                   help="tiny: seconds (smoke test); cpu: minutes on a CPU; paper: the paper's scale (use a GPU)")
    p.add_argument("--size", choices=["small", "full"], help="phantom size (default from the budget)")
    p.add_argument("--epochs", type=int, help="epochs per model (default from the budget)")
    p.add_argument("--max-steps", type=int, help="cap on training steps per epoch (default from the budget)")
    p.add_argument("--models", help=f"comma-separated subset of: {', '.join(MODELS)}")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embed", action="store_true", help="embed the figures in index.html (one self-contained file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUTDIR")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    models = [m.strip() for m in args.models.split(",")] if args.models else None

    def show(event):
        if event.get("event") == "evaluated":
            print(f"{event['model']}: PSNR {event['psnr']:.2f} dB (train {event['train_s']} s, synthesize {event['synthesize_s']} s)", flush=True)
        elif event.get("event") == "train":
            print(f"training {event['model']} ...", flush=True)
        elif event.get("event") == "epoch":
            print(f"  {event['model']}: epoch {event['epoch']} done", flush=True)

    summary = run_comparison(args.out, budget=args.budget, size=args.size, epochs=args.epochs, models=models,
                             device=args.device, seed=args.seed, overwrite=args.overwrite, embed_images=args.embed,
                             progress=show, max_steps=args.max_steps)
    from ..core.metrics import format_table

    for name, result in summary["metrics"].items():
        print(f"\n== {name} ==\n{format_table(result)}")
    if summary["verdict"]:
        print("\n" + summary["verdict"]["text"])
    print(f"\nwall time {summary['wall_s']} s; report: {summary['report']}")
    return 0
