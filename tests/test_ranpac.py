"""RanPAC: accumulated statistics, the ridge solve and the λ search against dense re-computations."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from clbench.config import apply_values
from clbench.methods.base import StreamInfo
from clbench.methods.ranpac import RanPAC, ridge_errors
from clbench.testing import InMemoryTask, run_method, separable_images

from conftest import tiny_vit

INFO = StreamInfo(5, ((0, 2), (2, 5)))
PROJ = torch.randn(3 * 16 * 16, 32, generator=torch.Generator().manual_seed(0)) / 16


def make(**options):
    """RanPAC without a first session whose features are a fixed random projection of the pixels."""
    opts = {"petl": "none", "projection": 24, **options}
    m = RanPAC(apply_values(RanPAC.Config(), opts, "method"), tiny_vit(), INFO)
    # computed in float64, then rounded: the same float32 features whatever the batch (threads, BLAS blocking)
    m.adapted_features = lambda x: (x.flatten(1).double() @ PROJ.double()).float()
    return m


def task(t, per_class=20, seed=0, batch_size=9):
    x, y = separable_images(*INFO.task_ranges[t], per_class=per_class, seed=seed)
    return InMemoryTask.of(INFO, t, x, y, batch_size=batch_size)


def stacked(m, tasks):
    """H (N, M) and one-hot Y (N, K) of the given tasks, recomputed densely in float64."""
    x, y = torch.cat([t.x for t in tasks]), torch.cat([t.y for t in tasks])
    h = torch.relu(m.adapted_features(x).double() @ m.w_rand.double())
    return h, F.one_hot(y, INFO.n_classes).double()


def test_accumulated_gram_and_ridge_head_equal_the_dense_solution_on_all_data():
    m = make(lambda_min_exp=2, lambda_max_exp=2)  # one candidate: λ = 100
    tasks = [task(0), task(1)]
    for t in tasks:
        m.after_task(t)
    h, y = stacked(m, tasks)
    assert torch.allclose(m.gram, h.t() @ h, rtol=1e-10)
    assert torch.allclose(m.targets, h.t() @ y, rtol=1e-10)
    ridge = np.linalg.solve(h.t().numpy() @ h.numpy() + 100 * np.eye(24), h.t().numpy() @ y.numpy())
    assert np.allclose(m.weight.double().numpy(), ridge.T, rtol=1e-4, atol=1e-6)
    assert m.task_log()["lambda"] == 100 and m.task_log()["projection"] == 24


def test_vanishing_lambda_gives_least_squares_and_any_task_order_the_same_head():
    m = make(lambda_min_exp=-12, lambda_max_exp=-12)
    tasks = [task(0), task(1)]
    for t in tasks:
        m.after_task(t)
    h, y = stacked(m, tasks)  # 100 samples, 24 columns: full column rank
    lstsq = torch.linalg.lstsq(h, y).solution
    assert torch.allclose(m.weight.double(), lstsq.t(), rtol=1e-3, atol=1e-4)
    # one pass over the shuffled concatenation (same W, fresh G) gives the same head
    other = make(lambda_min_exp=-12, lambda_max_exp=-12)
    other.setup_projection(torch.device("cpu"))
    other.w_rand = m.w_rand.clone()
    perm = torch.randperm(100)
    both = InMemoryTask(1, 0, 5, 2, torch.cat([t.x for t in tasks])[perm], torch.cat([t.y for t in tasks])[perm], 13)
    other.after_task(both)
    assert torch.allclose(other.gram, m.gram, rtol=1e-10) and torch.allclose(other.weight, m.weight, rtol=1e-3)


@pytest.mark.parametrize("n_fit", [30, 7], ids=["gram", "kernel"])  # more / fewer samples than M = 12
def test_lambda_scores_equal_the_validation_error_of_direct_ridge_solves(n_fit):
    g = torch.Generator().manual_seed(1)
    w_rand = torch.randn(5, 12, generator=g, dtype=torch.float64)

    def project(f, columns=None):
        return torch.relu(f @ (w_rand if columns is None else w_rand[:, columns]))

    f_fit, f_val = torch.randn(n_fit, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g,
                                                                                        dtype=torch.float64)
    y_fit = F.one_hot(torch.randint(0, 3, (n_fit,), generator=g), 3).double()
    y_val = F.one_hot(torch.randint(0, 3, (9,), generator=g), 3).double()
    lambdas = [1e-3, 1e-1, 10.0, 1e3]
    got = ridge_errors(project, f_fit, y_fit, f_val, y_val, lambdas, chunk=5)  # chunks: 3 column / row blocks
    h_fit, h_val = project(f_fit), project(f_val)
    for lam, score in zip(lambdas, got):
        w = torch.linalg.solve(h_fit.t() @ h_fit + lam * torch.eye(12, dtype=torch.float64), h_fit.t() @ y_fit)
        assert score == pytest.approx(float(((h_val @ w - y_val) ** 2).sum()), rel=1e-7)


def test_lambda_search_splits_the_task_data_and_picks_the_least_validation_error():
    m = make()
    m.after_task(task(0, per_class=50))
    log = m.task_log()
    assert log["lambda_fit_samples"] + log["lambda_val_samples"] == 100
    assert 60 <= log["lambda_fit_samples"] <= 95  # a random 80/20 split
    errors = log["lambda_val_mse"]
    assert len(errors) == 17 and log["lambda"] == float(min(errors, key=errors.get))


def test_linear_and_cosine_heads_score_the_projected_features():
    x = torch.rand(6, 3, 16, 16)
    for head in ("linear", "cosine"):
        m = make(head=head)
        m.after_task(task(0))
        h = torch.relu(m.adapted_features(x) @ m.w_rand)
        want = h @ m.weight.t() if head == "linear" else F.normalize(h, dim=-1) @ F.normalize(m.weight, dim=-1).t()
        assert torch.allclose(m.predict(x), want, rtol=1e-5, atol=1e-5)
    plain = make(projection=0)  # no random projection: ridge on the features
    plain.after_task(task(0))
    assert plain.w_rand.numel() == 0 and plain.weight.shape == (2, 32)


def test_only_the_first_session_trains_and_the_state_predicts_without_g_and_q():
    m = RanPAC(apply_values(RanPAC.Config(), {"projection": 64, "adapter_rank": 4}, "method"), tiny_vit(), INFO)
    results = run_method(m, tasks=2, steps=2, train={"lr": 0.05})
    assert [r["steps"] for r in results] == [2, 0]
    assert m.task_log()["petl"] == "adapter" and m.task_log()["width"] == 64
    state = m.task_state()
    assert state["gram"].numel() == 0 and "w_rand" in state and state["weight"].shape == (5, 64)


def test_analytic_presets_resolve_and_cite_their_sources():
    import clbench.benchmarks  # noqa: F401  (registers the presets)
    from clbench.presets import PRESETS
    from clbench.resolve import resolve

    presets = [p for p in PRESETS if p.method in ("ranpac", "fecam", "slca")]
    assert {(p.name, p.method) for p in presets if p.benchmark == "shapes"} == {
        ("default", "ranpac"), ("default", "fecam"), ("default", "slca")}
    for p in presets:
        assert p.source and p.name in ("default", "paper", "pilot"), p
        sets = [(f"benchmark.{k}", str(v)) for k, v in p.when.items()]
        run = resolve(p.method, p.benchmark, 1, p.name, sets)  # raises on an unknown key or a wrong type
        assert run.preset is p
        if p.reported is not None:
            assert 0 < p.reported.acc < 100 and p.reported.source
    heads = {(p.name, p.benchmark): p.values.get("method.head") for p in presets if p.method == "ranpac"}
    assert heads[("paper", "cifar100")] == "linear" and heads[("pilot", "cifar100")] == "cosine"
    modes = {p.name: p.values.get("method.mode") for p in presets if p.method == "fecam" and p.benchmark == "cifar100"}
    assert modes == {"paper": "official", "pilot": "pilot"}


def test_an_empty_lambda_range_is_a_config_error():
    from clbench.errors import ConfigError

    with pytest.raises(ConfigError, match="lambda_min_exp"):
        make(lambda_min_exp=3, lambda_max_exp=2)


def test_the_solve_falls_back_to_lu_where_cholesky_fails():
    m = make()
    m.setup_projection(torch.device("cpu"))
    g = torch.Generator().manual_seed(2)
    q = torch.randn(24, 24, generator=g, dtype=torch.float64)
    m.targets = torch.randn(24, INFO.n_classes, generator=g, dtype=torch.float64)
    for gram in (q @ q.t(), q @ torch.diag(torch.linspace(-1, 1, 24, dtype=torch.float64)) @ q.t()):  # SPD, indefinite
        m.gram = gram
        want = np.linalg.solve(gram.numpy() + 0.5 * np.eye(24), m.targets[:, :3].numpy())
        assert np.allclose(m.solve(0.5, 3).t().numpy(), want, rtol=1e-8, atol=1e-10)
