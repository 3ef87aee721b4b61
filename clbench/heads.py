"""Classifier heads shared by methods."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class IncrementalLinear(nn.Module):
    """A linear head over all classes seen so far, grown by :meth:`grow` at each task.

    Old rows are kept; new rows are Kaiming-uniform with a linear gain (bound √(3/d)) and
    zero bias, as in PILOT/SD-LoRA's ``SimpleLinear``.
    """

    def __init__(self, in_features: int):
        super().__init__()
        self.in_features = in_features
        self.weight = nn.Parameter(torch.empty(0, in_features))
        self.bias = nn.Parameter(torch.empty(0))

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @torch.no_grad()
    def grow(self, total: int) -> None:
        """Extend the head to ``total`` outputs."""
        new = total - self.out_features
        if new <= 0:
            return
        bound = math.sqrt(3.0 / self.in_features)
        w = self.weight.new_empty(new, self.in_features).uniform_(-bound, bound)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), w]))
        self.bias = nn.Parameter(torch.cat([self.bias.detach(), self.bias.new_zeros(new)]))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


class Prototypes(nn.Module):
    """Cosine classifier over class-mean features (SimpleCIL / APER)."""

    def __init__(self, in_features: int):
        super().__init__()
        self.register_buffer("means", torch.empty(0, in_features))

    @torch.no_grad()
    def set(self, labels: Tensor, means: Tensor) -> None:
        """Set the prototypes of ``labels`` (new labels, extending the table as needed)."""
        total = max(int(labels.max()) + 1, self.means.shape[0])
        table = self.means.new_zeros(total, self.means.shape[1])
        table[: self.means.shape[0]] = self.means
        table[labels] = means.to(table)
        self.means = table

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1) @ F.normalize(self.means, dim=-1).t()


class CosineLinear(nn.Module):
    """``σ · cos(x, w_c)`` over ``out_features`` classes: inputs and weight rows L2-normalised,
    one scale σ (learnable when ``learn_sigma``, initialised to 1), weights U(−1/√d, 1/√d).

    The cosine head the pretrained-model baselines (APER, RanPAC, EASE, MOS) train their
    first-session adapters with, and the form of their prototype classifiers.
    """

    def __init__(self, in_features: int, out_features: int, learn_sigma: bool = True):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.sigma = nn.Parameter(torch.ones(()), requires_grad=learn_sigma)

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.sigma * (F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).t())
