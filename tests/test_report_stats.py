"""The t-tests, t quantiles and old/new-class accuracy: against closed forms, a numerical
integral of the t density, and SciPy where it is installed."""

import math
import statistics

import pytest

from clbench.metrics import stability_plasticity
from clbench.report.stats import (betainc, confidence_interval, paired_t_test, t_quantile, t_sf_two_sided,
                                  welch_t_test)


def t_tail_by_integration(t, df, steps=20000):
    """P(|T| >= t) = 1 - 2 ∫_0^t f(x) dx with the t density f, by Simpson's rule."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = lambda x: c * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = t / steps
    s = f(0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 1 - 2 * s * h / 3


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.0])
def test_two_sided_tail_matches_closed_forms_for_one_and_two_degrees_of_freedom(t):
    assert t_sf_two_sided(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert t_sf_two_sided(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


@pytest.mark.parametrize("t,df", [(2.0, 10), (1.3, 3.7), (0.4, 7.2), (3.1, 25)])
def test_two_sided_tail_matches_the_integrated_density(t, df):
    assert t_sf_two_sided(t, df) == pytest.approx(t_tail_by_integration(t, df), abs=1e-9)


def test_quantiles_match_closed_forms_and_tables():
    for q in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)
        level = 2 * q - 1
        assert t_quantile(q, 2) == pytest.approx(math.sqrt(2 * level ** 2 / (1 - level ** 2)), rel=1e-9)
    # printed t tables, 97.5 % quantile
    for df, value in ((4, 2.776445), (9, 2.262157), (30, 2.042272)):
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-6)


def test_betainc_symmetry_and_a_closed_form():
    assert betainc(2.0, 3.0, 0.3) == pytest.approx(1 - betainc(3.0, 2.0, 0.7), abs=1e-13)
    x = 0.37  # I_x(1, b) = 1 - (1 - x)^b
    assert betainc(1.0, 4.5, x) == pytest.approx(1 - (1 - x) ** 4.5, abs=1e-13)


def test_welch_statistic_and_degrees_of_freedom_from_the_formula():
    a, b = [81.2, 79.5, 80.9, 82.0], [78.1, 80.3, 76.4, 77.9, 79.0]
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.mean(a) - statistics.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    res = welch_t_test(a, b)
    assert res.t == pytest.approx(t, rel=1e-12) and res.df == pytest.approx(df, rel=1e-12)
    assert res.p == pytest.approx(t_tail_by_integration(abs(t), df), abs=1e-9)
    assert welch_t_test(b, a).p == pytest.approx(res.p) and welch_t_test(b, a).t == pytest.approx(-t)
    assert math.isnan(welch_t_test([1.0], b).p)  # one seed: undefined
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]).p == 1.0 and welch_t_test([1.0, 1.0], [2.0, 2.0]).p == 0.0


def test_paired_test_uses_the_differences():
    a, b = [80.0, 82.5, 79.0, 81.0], [79.0, 82.0, 77.5, 80.8]
    d = [x - y for x, y in zip(a, b)]
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    res = paired_t_test(a, b)
    assert res.t == pytest.approx(t) and res.df == 3
    assert res.p == pytest.approx(t_tail_by_integration(abs(t), 3), abs=1e-9)
    assert res.p < welch_t_test(a, b).p  # pairing removes the seed-to-seed spread
    with pytest.raises(ValueError):
        paired_t_test([1.0, 2.0], [1.0])


def test_confidence_interval_is_mean_plus_minus_t_times_se():
    values = [70.0, 72.0, 71.5, 69.0, 73.5]
    se = statistics.stdev(values) / math.sqrt(5)
    lo, hi = confidence_interval(values)
    assert (lo, hi) == pytest.approx((statistics.mean(values) - 2.776445 * se, statistics.mean(values) + 2.776445 * se),
                                     abs=1e-5)
    assert all(math.isnan(v) for v in confidence_interval([1.0]))


def test_against_scipy_where_installed():
    st = pytest.importorskip("scipy.stats")
    a, b = [81.2, 79.5, 80.9, 82.0], [78.1, 80.3, 76.4, 77.9, 79.0]
    assert welch_t_test(a, b).p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert paired_t_test(a, b[:4]).p == pytest.approx(st.ttest_rel(a, b[:4]).pvalue, rel=1e-9)
    assert t_quantile(0.975, 6.3) == pytest.approx(st.t.ppf(0.975, 6.3), rel=1e-9)


def test_stability_plasticity_from_per_class_counts():
    totals = [5, 5, 10, 10, 10, 10]  # tasks: classes 0-1 (10 samples), 2-3 (20), 4-5 (20)
    ranges = [(0, 2), (2, 4), (4, 6)]
    correct = [[4, 5], [2, 3, 9, 8], [1, 1, 5, 6, 10, 9]]
    got = stability_plasticity(correct, totals, ranges)
    assert got == [(None, 90.0), (50.0, 85.0), (100 * 13 / 30, 95.0)]
