"""Choosing where and at what precision the networks run.

``auto`` picks CUDA, then Apple's MPS, then the CPU.  Precision is a name
("fp32", "bf16", "fp16"); reduced precisions run under ``torch.autocast`` so
weights stay float32 and only the matrix work is done in 16 bits.
"""

from __future__ import annotations

import contextlib
import sys

from .errors import T1ToT2Error

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("fp32", "bf16", "fp16")


def _mps_available(torch) -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for ``name`` ("auto", "cuda", "cuda:1", "mps" or "cpu")."""
    import torch

    name = str(name or "auto").lower()
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise T1ToT2Error(f"unknown device {name!r}: use one of {', '.join(DEVICES)}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda":
        if not torch.cuda.is_available():
            raise T1ToT2Error(
                "CUDA was requested but this PyTorch sees no CUDA GPU: install a CUDA build of PyTorch "
                "and a driver, or use --device cpu (or auto)"
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise T1ToT2Error(
                f"{name} does not exist (this machine has {torch.cuda.device_count()} CUDA device(s)): use cuda:0 or auto"
            )
        return device
    if base == "mps":
        if not _mps_available(torch):
            raise T1ToT2Error("MPS was requested but is not available (it needs Apple silicon and macOS 12.3+): use --device cpu or auto")
        return torch.device("mps")
    return torch.device("cpu")


def check_precision(precision: str) -> str:
    """The precision's name, lower case; "auto" (see :func:`auto_precision`) is accepted beside :data:`PRECISIONS`."""
    precision = str(precision or "fp32").lower()
    if precision != "auto" and precision not in PRECISIONS:
        raise T1ToT2Error(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)} or auto")
    return precision


def native_bf16(device) -> bool:
    """Whether ``device`` runs bfloat16 matrix work in hardware.

    On the CPU that is oneDNN's check for AVX512-BF16 or AMX: without them bfloat16 is emulated
    and was measured hundreds of times slower than float32 (an AVX2-only machine of this project).
    """
    import torch

    kind = getattr(device, "type", str(device)).split(":", 1)[0]
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def auto_precision(device) -> str:
    """What precision "auto" means on ``device``: bf16 on a GPU that has it (else fp16), bf16 on a
    CPU with native bfloat16 (``t1tot2 bench`` measures its quality cost on the phantom), else fp32."""
    kind = getattr(device, "type", str(device)).split(":", 1)[0]
    if kind == "cuda":
        return "bf16" if native_bf16(device) else "fp16"
    if kind == "cpu" and native_bf16(device):
        return "bf16"
    return "fp32"


def effective_precision(device, precision: str, warn=None) -> str:
    """The precision actually used on ``device``: "auto" resolved by :func:`auto_precision`;
    fp16 on the CPU falls back to bf16 (with a message)."""
    precision = check_precision(precision)
    if precision == "auto":
        return auto_precision(device)
    if precision == "fp16" and getattr(device, "type", str(device)) == "cpu":
        message = "fp16 is not supported on the CPU; using bf16 instead"
        (warn or (lambda m: print(f"t1tot2: {m}", file=sys.stderr)))(message)
        return "bf16"
    return precision


def autocast_context(device, precision: str = "fp32", warn=None):
    """A context manager running the enclosed torch work at ``precision`` on ``device``."""
    import torch

    precision = effective_precision(device, precision, warn=warn)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    oom_type = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(exc, oom_type):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def run_with_oom_fallback(work, device, warn=None):
    """Run ``work(device)``; if a GPU runs out of memory, say so and run ``work(cpu)`` instead.

    ``work`` must be restartable: it is called again from the start on the CPU.
    """
    import torch

    device = torch.device(device)
    try:
        return work(device)
    except Exception as exc:  # noqa: BLE001 - only out-of-memory is handled, the rest re-raised
        if device.type == "cpu" or not is_out_of_memory(exc):
            raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    message = f"{device} ran out of memory; retrying on the CPU (slower). Use a smaller --batch to stay on the GPU"
    (warn or (lambda m: print(f"t1tot2: {m}", file=sys.stderr)))(message)
    return work(torch.device("cpu"))
