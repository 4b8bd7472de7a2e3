"""The PyTorch predictor of the synthesis pipeline, and the generator as synthesis runs it.

Importing this module does not import torch; building a :class:`TorchPredictor` does.
"""

from __future__ import annotations

import functools

import numpy as np

from ..core.errors import T1ToT2Error

BATCH_NORM_MODES = ("slice", "running")


def check_batch_norm(batch_norm: str) -> str:
    if batch_norm not in BATCH_NORM_MODES:
        raise T1ToT2Error(f"unknown batch-norm mode {batch_norm!r}: use one of {', '.join(BATCH_NORM_MODES)}")
    return batch_norm


def inference_generator(generator, batch_norm: str = "slice"):
    """The generator as synthesis runs it, in eval mode.

    With ``batch_norm="slice"`` every batch-norm layer normalises each slice by
    its own statistics (keeping the learned scale and shift), as the reference
    Pix2Pix does at test time with batch size 1.  Running statistics gathered
    from batches of one slice describe no slice well; using them ("running")
    gave a clearly worse L1 on the test phantom.  The given module is never
    modified: layers are swapped in a copy.
    """
    import copy

    from torch import nn

    check_batch_norm(batch_norm)
    if (batch_norm == "running" or getattr(generator, "uses_running_statistics", False)
            or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in generator.modules())):
        return generator.eval()
    per_slice = copy.deepcopy(generator).eval()
    _swap_batch_norm(per_slice)
    return per_slice


@functools.lru_cache(maxsize=None)
def _per_slice_batch_norm_class():
    """Defined on first use so that importing this module (the CLI does) does not import torch."""
    import torch.nn.functional as F
    from torch import nn

    class PerSliceBatchNorm(nn.Module):
        """A batch-norm layer's learned affine over each sample's own statistics (instance norm)."""

        def __init__(self, source):
            super().__init__()
            self.weight, self.bias, self.eps = source.weight, source.bias, source.eps

        def forward(self, x):
            return F.instance_norm(x, weight=self.weight, bias=self.bias, use_input_stats=True, eps=self.eps)

    return PerSliceBatchNorm


def _swap_batch_norm(module) -> None:
    from torch import nn

    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, _per_slice_batch_norm_class()(child))
        else:
            _swap_batch_norm(child)


class TorchPredictor:
    """Runs a generator (already in its synthesis form, see :func:`inference_generator`) on ``device``.

    Its input buffer is laid out channels-last, which oneDNN's convolutions run faster on the CPU
    (same values), and pinned for CUDA transfers; the pipeline fills it in place batch by batch.
    """

    engine = "torch"

    def __init__(self, generator, device, precision: str = "fp32"):
        import torch

        from ..core.devices import effective_precision

        self.generator = generator.to(device)
        self.device = torch.device(device)
        self.requested_precision = precision
        self.precision = effective_precision(self.device, precision)
        self._buffer = None

    @classmethod
    def for_model(cls, loaded, device="auto", precision: str = "fp32", batch_norm: str = "slice") -> "TorchPredictor":
        import torch

        from ..core.devices import check_precision, resolve_device

        check_batch_norm(batch_norm)
        check_precision(precision)
        device = device if isinstance(device, torch.device) else resolve_device(device)
        return cls(inference_generator(loaded.generator.to(device), batch_norm), device, precision)

    @property
    def where(self) -> str:
        return str(self.device)

    def allocate(self, batch: int, channels: int, height: int, width: int) -> np.ndarray:
        import torch

        pin = self.device.type == "cuda"
        self._buffer = torch.empty((batch, height, width, channels), dtype=torch.float32,
                                   pin_memory=pin).permute(0, 3, 1, 2)  # NCHW shape, channels-last strides
        return self._buffer.numpy()

    def predict(self, n: int) -> np.ndarray:
        import torch

        from ..core.devices import autocast_context

        pin = self.device.type == "cuda"
        batch = self._buffer[:n].to(self.device, non_blocking=pin)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            predicted = self.generator(batch)
        return predicted.float().cpu().numpy()[:, 0]

    def is_out_of_memory(self, exc: BaseException) -> bool:
        from ..core.devices import is_out_of_memory

        return self.device.type != "cpu" and is_out_of_memory(exc)

    def on_cpu(self) -> "TorchPredictor":
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return TorchPredictor(self.generator.to("cpu"), torch.device("cpu"), self.requested_precision)
