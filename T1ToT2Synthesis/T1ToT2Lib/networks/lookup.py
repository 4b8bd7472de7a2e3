"""The one-to-one look-up baseline as a "generator": T2 = table(T1), linear between knots.

The paper (fig. 12) shows that no single T2 value per T1 value reproduces the
T2 SPACE image, because fat and cortical bone are both dark on VIBE.  This module
makes that baseline a model like the others: an ``nn.Module`` whose state is a
table, saved in a ``.safetensors`` model file and run by ``synthesize`` and
``evaluate`` unchanged.  The table is fitted by :func:`T1ToT2Lib.research.analysis.fit_lookup`.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_BINS = 256


class LookupTranslator(nn.Module):
    """Map the centre channel of normalised T1 slices (N, C, H, W) to normalised T2 (N, 1, H, W).

    Buffers (their sizes come from ``config["bins"]``, so a model file's state loads
    into a module built from its config):

    * ``edges`` — the T1 bin edges used for fitting, ``bins + 1`` values;
    * ``knots`` — one T1 position per bin, increasing (the mean T1 of the most probable
      cell of that bin, or the bin centre where the bin was empty);
    * ``table`` — the T2 value at each knot.

    Between knots the output is interpolated linearly; outside them it is held constant.
    """

    def __init__(self, config: dict):
        super().__init__()
        bins = int(config.get("bins", DEFAULT_BINS))
        if bins < 2:
            raise ValueError(f"a look-up table needs at least 2 bins, got {bins}")
        t1_max = float(config.get("t1_max", 1.0))
        self.bins = bins
        edges = torch.linspace(0.0, t1_max, bins + 1)
        self.register_buffer("edges", edges)
        self.register_buffer("knots", 0.5 * (edges[:-1] + edges[1:]))
        self.register_buffer("table", torch.zeros(bins))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t1 = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1].to(self.knots.dtype)
        knots, table = self.knots, self.table
        upper = torch.searchsorted(knots, t1.contiguous()).clamp(1, self.bins - 1)
        x0, x1 = knots[upper - 1], knots[upper]
        y0, y1 = table[upper - 1], table[upper]
        weight = ((t1 - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
        return (y0 + weight * (y1 - y0)).to(x.dtype)
