"""Conditional MADE: a masked dense network, autoregressive over the features of a vector.

Output ``i`` (a shift and a log-scale) depends only on inputs ``< i`` in the natural order, and
on a context vector that is added into every hidden layer (a layer may never run unconditioned).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaskedLinear", "MADE"]


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed binary mask."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive conditioner ``(u (B, D), context (B, C)) -> (shift, log_scale)``, each (B, D).

    Degrees: input ``i`` has degree ``i + 1``; hidden units cycle through ``1 .. D-1``; output
    ``i`` sees hidden units of degree ``<= i``, so it sees inputs ``< i`` only. The last layer
    starts at zero so a fresh flow is the identity.
    """

    def __init__(
        self, features: int, context_features: int, hidden_features: int, num_hidden: int = 2
    ):
        super().__init__()
        if features < 2:
            raise ValueError(f"MADE needs features >= 2, found {features}")
        self.features = features
        in_deg = torch.arange(1, features + 1)
        hid_deg = torch.arange(hidden_features) % max(features - 1, 1) + 1
        out_deg = torch.arange(1, features + 1)
        layers, contexts = [], []
        prev = in_deg
        for _ in range(num_hidden):
            mask = (hid_deg[:, None] >= prev[None, :]).float()
            layers.append(MaskedLinear(len(prev), hidden_features, mask))
            contexts.append(nn.Linear(context_features, hidden_features))
            prev = hid_deg
        self.hidden = nn.ModuleList(layers)
        self.context = nn.ModuleList(contexts)
        out_mask = (out_deg[:, None] > prev[None, :]).float().repeat(2, 1)
        self.out = MaskedLinear(hidden_features, 2 * features, out_mask)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, u: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """u: (B, D), context: (B, C) -> shift (B, D), raw log-scale (B, D)."""
        h = u
        for layer, ctx in zip(self.hidden, self.context):
            h = torch.relu(layer(h) + ctx(context))
        shift, log_scale = self.out(h).chunk(2, dim=-1)
        return shift, log_scale
