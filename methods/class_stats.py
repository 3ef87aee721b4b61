"""Per-class feature statistics from one pass over a task's data, in float64, reduced over ranks.

Shared by the methods that classify with, or sample from, class-wise Gaussians (FeCAM, SLCA):
:func:`class_moments` accumulates counts, sums and sums of outer products per class (never
the samples themselves), sums them over ranks and returns means and unbiased covariances.
:func:`mahalanobis` scores features against per-class means and precision matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from clbench.errors import ConfigError


@dataclass
class ClassMoments:
    """Counts (C,), means (C, d) and unbiased covariances (C, d, d) of the classes ``lo..hi-1``, float64."""

    counts: Tensor
    means: Tensor
    covs: Tensor | None


@torch.no_grad()
def class_moments(features: Callable[[Tensor], Tensor], ctx, dim: int, covariance: bool = True) -> ClassMoments:
    """One pass over ``ctx``'s training data (test transforms): per-class moments of
    ``features(x)`` (float64 from here on), summed over ranks with ``ctx.all_reduce``."""
    n = ctx.hi - ctx.lo
    counts = torch.zeros(n, device=ctx.device, dtype=torch.float64)
    sums = torch.zeros(n, dim, device=ctx.device, dtype=torch.float64)
    outer = torch.zeros(n, dim, dim, device=ctx.device, dtype=torch.float64) if covariance else None
    for x, y in ctx.batches(augment=False, description="class statistics"):
        with ctx.autocast():
            f = features(x)
        f, local = f.double(), y - ctx.lo
        counts.index_add_(0, local, torch.ones_like(local, dtype=torch.float64))
        sums.index_add_(0, local, f)
        if outer is not None:
            for c in torch.unique(local).tolist():  # a statistics pass, not a training step
                fc = f[local == c]
                outer[c] += fc.t() @ fc
    counts, sums = ctx.all_reduce(counts), ctx.all_reduce(sums)
    if bool((counts == 0).any()):
        missing = (torch.nonzero(counts == 0).flatten() + ctx.lo).tolist()
        raise ConfigError(f"Task {ctx.index + 1} has no training samples of classes {missing[:5]}; class "
                          "statistics need at least one (two for a covariance) per class.")
    means = sums / counts[:, None]
    covs = None
    if outer is not None:
        outer = ctx.all_reduce(outer)
        if bool((counts < 2).any()):
            raise ConfigError(f"Task {ctx.index + 1} has a class with a single training sample; a covariance "
                              "needs at least two per class.")
        centred = outer - counts[:, None, None] * means[:, :, None] * means[:, None, :]
        covs = centred / (counts - 1)[:, None, None]
    return ClassMoments(counts, means, covs)


def mahalanobis(x: Tensor, means: Tensor, precisions: Tensor, chunk: int = 1 << 24) -> Tensor:
    """Squared Mahalanobis distances (B, C): ``(x − μ_c)ᵀ P_c (x − μ_c)`` for every class,
    in chunks of classes so that at most ~``chunk`` elements of differences are held."""
    out = []
    step = max(1, chunk // max(1, x.shape[0] * x.shape[1]))
    for lo in range(0, means.shape[0], step):
        diff = x[:, None, :] - means[None, lo:lo + step]  # (B, c, d)
        out.append(torch.einsum("bcd,cde,bce->bc", diff, precisions[lo:lo + step], diff))
    return torch.cat(out, dim=1) if out else x.new_zeros(x.shape[0], 0)
