"""Loss landscapes between task solutions: lines and planes in parameter space (the core).

A *point* is a list of tensors, one per interpolated tensor, in a fixed order. The model
that is evaluated is one live module (the *target*, the latest solution): its interpolated
tensors are overwritten in place for each point and restored afterwards, so no model is
copied per point and the forward is the method's own.

* Line (Goodfellow et al. 2015; SD-LoRA Fig. 4): θ(λ) = (1−λ)·θ_a + λ·θ_b, computed with
  :func:`torch.lerp`, which is exact at λ = 0 and λ = 1.
* Plane through three solutions (Garipov et al. 2018): u = θ_b − θ_a, v = θ_c − θ_a;
  e1 = u/‖u‖, e2 = (v − (v·e1)e1)/‖…‖ (Gram–Schmidt); θ(x, y) = θ_a + x·e1 + y·e2, so the
  solutions sit at (0, 0), (‖u‖, 0) and (v·e1, ‖v − (v·e1)e1‖) and distances are true
  Euclidean distances in the interpolated parameters.

Which tensors are interpolated (:func:`select`): floating-point parameters and buffers that
exist in every solution with the target's shape and differ between solutions, and that the
target's forward actually uses (:func:`used_by`; e.g. adapter factors are idle while merged
into the weights for evaluation). Tensors that grew (a head with more classes) come from the
target, or, with ``grown="interpolate"``, their leading block common to all solutions is
interpolated and the rest comes from the target.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

Point = list[Tensor]


def named_tensors(module: nn.Module) -> dict[str, Tensor]:
    """Floating-point parameters and buffers by name (shared tensors once)."""
    out: dict[str, Tensor] = {}
    seen: set[int] = set()
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t is not None and t.is_floating_point() and id(t) not in seen:
            seen.add(id(t))
            out[name] = t
    return out


@dataclass
class Selection:
    """What a landscape interpolates: names, the region of each tensor, and what it leaves."""

    names: list[str]
    regions: list[tuple[slice, ...]]  # the interpolated block of each tensor (all of it, or the common lead)
    from_target: list[str]  # tensors that differ but are taken from the target (shape changed, or unused)

    def numel(self, target: dict[str, Tensor]) -> int:
        return sum(int(target[n][r].numel()) for n, r in zip(self.names, self.regions))


def select(solutions: Sequence[dict[str, Tensor]], target: dict[str, Tensor], grown: str = "target") -> Selection:
    """The tensors to interpolate between ``solutions`` (snapshots), live in ``target``."""
    if grown not in ("target", "interpolate"):
        raise ValueError(f"grown must be 'target' or 'interpolate', got {grown!r}")
    names, regions, kept = [], [], []
    for name, live in target.items():
        values = [s.get(name) for s in solutions]
        if any(v is None for v in values):
            continue  # new in the target (e.g. a new task's head): nothing to interpolate
        if all(v.shape == live.shape for v in values):
            region = tuple(slice(None) for _ in live.shape)
        elif grown == "interpolate" and all(v.dim() == live.dim() for v in values):
            region = tuple(slice(0, min(v.shape[d] for v in values)) for d in range(live.dim()))
        else:
            if any(not torch.equal(values[0], v) for v in values[1:]) or values[0].shape != live.shape:
                kept.append(name)
            continue
        blocks = [v[region] for v in values]
        if any(not torch.equal(blocks[0], b) for b in blocks[1:]):
            names.append(name)
            regions.append(region)
            if any(v.shape != live.shape for v in values):
                kept.append(name)  # partly: outside the common block
    return Selection(names, regions, kept)


def used_by(tensors: dict[str, Tensor], forward: Callable[[], Tensor]) -> set[str] | None:
    """Names of the tensors the output of ``forward()`` depends on (through autograd), or None
    when that cannot be told (the forward detaches or runs without grad)."""
    flags = {n: t.requires_grad for n, t in tensors.items()}
    try:
        for t in tensors.values():
            t.requires_grad_(True)
        with torch.enable_grad():
            out = forward()
            if not out.requires_grad:
                return None
            grads = torch.autograd.grad(out.float().sum(), list(tensors.values()), allow_unused=True)
    except RuntimeError:
        return None
    finally:
        for n, t in tensors.items():
            t.requires_grad_(flags[n])
    return {n for n, g in zip(tensors, grads) if g is not None}


def snapshot(tensors: dict[str, Tensor], sel: Selection) -> Point:
    """The selected blocks' current values, detached copies (a point)."""
    return [tensors[n].detach()[r].clone() for n, r in zip(sel.names, sel.regions)]


# ----------------------------------------------------------------------------- geometry

def lerp(a: Point, b: Point, lam: float) -> Point:
    """(1−λ)·a + λ·b, exact at the endpoints."""
    return [torch.lerp(x, y, float(lam)) for x, y in zip(a, b)]


def dot(a: Point, b: Point) -> float:
    """Inner product over all tensors, accumulated in float64."""
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b)))


def combine(origin: Point, terms: Sequence[tuple[float, Point]]) -> Point:
    """origin + Σ c·d."""
    out = [o.clone() for o in origin]
    for coeff, direction in terms:
        for o, d in zip(out, direction):
            o.add_(d, alpha=float(coeff))
    return out


@dataclass
class Plane:
    """The plane through three points, with an orthonormal basis (e1, e2) at ``origin``."""

    origin: Point
    e1: Point
    e2: Point
    coords: np.ndarray  # (3, 2): the three points in plane coordinates

    def point(self, x: float, y: float) -> Point:
        return combine(self.origin, [(x, self.e1), (y, self.e2)])


def plane_through(a: Point, b: Point, c: Point) -> Plane:
    """Gram–Schmidt basis of the plane through a, b, c (a at the origin, b on the x-axis)."""
    u = [y - x for x, y in zip(a, b)]
    nu = math.sqrt(dot(u, u))
    if nu == 0:
        raise ValueError("the first two solutions are identical: no plane through them")
    e1 = [t / nu for t in u]
    v = [y - x for x, y in zip(a, c)]
    p = dot(v, e1)
    w = combine(v, [(-p, e1)])
    nw = math.sqrt(dot(w, w))
    if nw <= 1e-5 * max(nu, math.sqrt(dot(v, v))):  # float32 rounding leaves ~1e-7
        raise ValueError("the three solutions are collinear: no unique plane through them")
    e2 = [t / nw for t in w]
    return Plane(a, e1, e2, np.array([[0.0, 0.0], [nu, 0.0], [p, nw]]))


def plane_grid(coords: np.ndarray, points: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Axes of a ``points × points`` grid over the solutions' bounding box plus ``margin``
    (a fraction of the box's larger side) on every side."""
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = margin * float((hi - lo).max())
    return np.linspace(lo[0] - pad, hi[0] + pad, points), np.linspace(lo[1] - pad, hi[1] + pad, points)


# ----------------------------------------------------------------------------- evaluation

class LiveBlocks:
    """The selected blocks of the target's tensors, written in place; restored on exit."""

    def __init__(self, tensors: dict[str, Tensor], sel: Selection):
        self.views = [tensors[n].detach()[r] for n, r in zip(sel.names, sel.regions)]
        self._saved: Point | None = None

    @torch.no_grad()
    def set(self, point: Point) -> None:
        for view, value in zip(self.views, point):
            view.copy_(value)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[LiveBlocks]:
        self._saved = [v.clone() for v in self.views]
        try:
            yield self
        finally:
            self.set(self._saved)
            self._saved = None


def scan_line(live: LiveBlocks, a: Point, b: Point, lambdas: Sequence[float],
              evaluate: Callable[[], Any], step: Callable[[], None] | None = None) -> list[Any]:
    """``evaluate()`` at θ(λ) = (1−λ)a + λb for each λ."""
    out = []
    with live.restoring():
        for lam in lambdas:
            live.set(lerp(a, b, lam))
            out.append(evaluate())
            if step:
                step()
    return out


def scan_plane(live: LiveBlocks, plane: Plane, xs: Sequence[float], ys: Sequence[float],
               evaluate: Callable[[], Any], step: Callable[[], None] | None = None) -> list[list[Any]]:
    """``evaluate()`` at every grid point; result[iy][ix]."""
    out = []
    with live.restoring():
        for y in ys:
            row = []
            for x in xs:
                live.set(plane.point(x, y))
                row.append(evaluate())
                if step:
                    step()
            out.append(row)
    return out


def at_points(live: LiveBlocks, points: Sequence[Point], evaluate: Callable[[], Any]) -> list[Any]:
    """``evaluate()`` at given points exactly (e.g. the solutions themselves)."""
    with live.restoring():
        out = []
        for p in points:
            live.set(p)
            out.append(evaluate())
    return out
