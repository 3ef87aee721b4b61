"""Significance and confidence over seeds, as pure functions (no SciPy needed).

* :func:`welch_t_test`: two independent samples with unequal variances; the degrees of
  freedom by Welch–Satterthwaite, ν = (s₁²/n₁ + s₂²/n₂)² / ((s₁²/n₁)²/(n₁−1) + (s₂²/n₂)²/(n₂−1)).
* :func:`paired_t_test`: the differences of pairs (the same seed, hence the same class order
  and data, for both methods): t = mean(d) / (sd(d)/√n), n−1 degrees of freedom.
* :func:`confidence_interval`: mean ± t_{(1+level)/2, n−1} · sd/√n.

Both tests are two-sided. The t distribution's CDF comes from the regularised incomplete beta
function, P(|T| > t) = I_{ν/(ν+t²)}(ν/2, 1/2), evaluated with its continued fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ALPHA = 0.05


@dataclass(frozen=True)
class TestResult:
    """A two-sided t-test: statistic, degrees of freedom, p-value (NaN when undefined)."""

    t: float
    df: float
    p: float


UNDEFINED = TestResult(math.nan, math.nan, math.nan)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 ≤ x ≤ 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_sf_two_sided(t: float, df: float) -> float:
    """P(|T| ≥ |t|) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile (0.5 ≤ q < 1) of Student's t: the t with P(T ≤ t) = q (bisection)."""
    target = 2.0 * (1.0 - q)  # two-sided tail mass beyond t
    lo, hi = 0.0, 1.0
    while t_sf_two_sided(hi, df) > target:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if t_sf_two_sided(mid, df) > target else (lo, mid)
    return (lo + hi) / 2.0


def _mean_var(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = sum(values) / n
    return mean, sum((v - mean) ** 2 for v in values) / (n - 1), n


def _result(diff: float, se2: float, df: float) -> TestResult:
    if se2 <= 0.0:  # no spread at all: identical means are not different, others are
        return TestResult(0.0 if diff == 0 else math.copysign(math.inf, diff), df, 1.0 if diff == 0 else 0.0)
    t = diff / math.sqrt(se2)
    return TestResult(t, df, t_sf_two_sided(t, df))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Welch's two-sided t-test of mean(a) = mean(b); undefined with fewer than 2 values in either."""
    if len(a) < 2 or len(b) < 2:
        return UNDEFINED
    (ma, va, na), (mb, vb, nb) = _mean_var(a), _mean_var(b)
    sa, sb = va / na, vb / nb
    if sa + sb <= 0.0:
        return _result(ma - mb, 0.0, float(na + nb - 2))
    df = (sa + sb) ** 2 / ((sa ** 2 / (na - 1) if sa else 0.0) + (sb ** 2 / (nb - 1) if sb else 0.0))
    return _result(ma - mb, sa + sb, df)


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """The two-sided paired t-test of mean(a − b) = 0 (a[i] and b[i] form a pair)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    if len(a) < 2:
        return UNDEFINED
    md, vd, n = _mean_var([x - y for x, y in zip(a, b)])
    return _result(md, vd / n, float(n - 1))


def confidence_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The ``level`` confidence interval of the mean (t distribution); NaNs below 2 values."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if len(values) < 2:
        return math.nan, math.nan
    mean, var, n = _mean_var(values)
    half = t_quantile(0.5 + level / 2.0, n - 1) * math.sqrt(var / n)
    return mean - half, mean + half
