"""FeCAM and the shared class statistics against direct dense re-computations."""

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from clbench.config import apply_values
from clbench.errors import ConfigError
from clbench.methods.base import StreamInfo
from clbench.methods.class_stats import class_moments, mahalanobis
from clbench.methods.fecam import FeCAM
from clbench.testing import InMemoryTask, separable_images

from conftest import tiny_vit

INFO = StreamInfo(4, ((0, 2), (2, 4)))


PROJ = torch.randn(3 * 16 * 16, 32, generator=torch.Generator().manual_seed(0)) / 16


def make(**options):
    """FeCAM whose features are a fixed random projection of the pixels (well-conditioned
    class covariances, unlike a random tiny ViT's nearly constant features)."""
    m = FeCAM(apply_values(FeCAM.Config(), options, "method"), tiny_vit(), INFO)
    m.features = lambda x: x.flatten(1) @ PROJ
    return m


def task(t, per_class=40, seed=0, batch_size=16):
    x, y = separable_images(*INFO.task_ranges[t], per_class=per_class, seed=seed)
    return InMemoryTask.of(INFO, t, x, y, batch_size=batch_size)


def np_shrink(cov, a1, a2):
    """FeCAM_vit_*.py's shrinkage, written out with numpy."""
    off = cov.copy()
    np.fill_diagonal(off, 0.0)
    off_mean = off[off != 0].mean()
    eye = np.eye(len(cov))
    return cov + a1 * np.diag(cov).mean() * eye + a2 * off_mean * (1 - eye)


def test_class_moments_equal_stacked_mean_and_covariance_in_any_order():
    feats = torch.randn(50, 6, dtype=torch.float64)
    labels = torch.arange(50) % 3
    ctx = InMemoryTask(0, 0, 3, 1, feats, labels, batch_size=7)
    stats = class_moments(lambda x: x, ctx, 6)
    perm = torch.randperm(50)
    shuffled = class_moments(lambda x: x, InMemoryTask(0, 0, 3, 1, feats[perm], labels[perm], batch_size=11), 6)
    for c in range(3):
        rows = feats[labels == c]
        assert torch.allclose(stats.means[c], rows.mean(0))
        assert torch.allclose(stats.covs[c], torch.cov(rows.t()))
        assert torch.allclose(shuffled.covs[c], stats.covs[c])
    assert stats.counts.tolist() == [17, 17, 16]


def test_class_moments_need_two_samples_per_class():
    ctx = InMemoryTask(0, 0, 2, 1, torch.randn(3, 4), torch.tensor([0, 0, 1]))
    with pytest.raises(ConfigError, match="single training sample"):
        class_moments(lambda x: x, ctx, 4)


def test_mahalanobis_matches_the_direct_formula_and_identity_is_euclidean():
    x, means = torch.randn(9, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    a = torch.randn(4, 5, 5, dtype=torch.float64)
    prec = a @ a.transpose(1, 2)
    got = mahalanobis(x, means, prec, chunk=40)  # several class chunks
    want = torch.tensor([[float((xi - m) @ p @ (xi - m)) for m, p in zip(means, prec)] for xi in x])
    assert torch.allclose(got, want.double())
    eye = torch.eye(5, dtype=torch.float64).expand(4, 5, 5)
    assert torch.allclose(mahalanobis(x, means, eye), torch.cdist(x, means) ** 2)


def test_official_statistics_and_distances_equal_the_reference_formulas():
    m = make(alpha1=10.0, alpha2=10.0)
    ctx = task(0)
    m.after_task(ctx)
    feats = F.normalize(m.features(ctx.x), dim=-1).double().numpy()
    labels = ctx.y.numpy()
    for c in range(2):
        rows = feats[labels == c]
        assert np.allclose(m.means[c].numpy(), rows.mean(0), atol=1e-6)
        assert np.allclose(m.precisions[c].numpy(), np.linalg.pinv(_corr(rows)), rtol=1e-4, atol=1e-4)
    x = torch.rand(5, 3, 16, 16)
    f = F.normalize(m.features(x), dim=-1).double().numpy()
    scores = m.predict(x).double().numpy()
    for c in range(2):
        diff = f - m.means[c].double().numpy()
        direct = np.einsum("bd,de,be->b", diff, np.linalg.pinv(_corr(feats[labels == c])), diff)
        assert np.allclose(-scores[:, c], direct, rtol=1e-3, atol=1e-3)
    assert m.task_log()["shrink_diag"][0] == pytest.approx(10 * np.diag(np.cov(feats[labels == 0].T)).mean())


def _corr(rows):
    """Shrunk (α1 = α2 = 10) and correlation-normalised covariance of ``rows``."""
    cov = np_shrink(np.cov(rows.T), 10, 10)
    sd = np.sqrt(np.diag(cov))
    return cov / np.outer(sd, sd)


def test_pilot_mode_is_corrcoef_of_the_raw_shrunk_covariance_and_near_nearest_mean():
    m = make(mode="pilot")
    for t in range(2):
        m.after_task(task(t))
    ctx = task(0)
    raw = m.features(ctx.x).double().numpy()
    rows = raw[ctx.y.numpy() == 0]
    assert np.allclose(m.means[0].numpy(), rows.mean(0) / np.linalg.norm(rows.mean(0)), atol=1e-6)
    want = np.linalg.pinv(np.corrcoef(np.cov(rows.T) + 100 * np.eye(rows.shape[1])))
    assert np.allclose(m.precisions[0].numpy(), want, rtol=1e-3, atol=1e-3)
    # with α = 100 the matrix is nearly a scaled identity: the ranking is nearest-mean's
    x = torch.rand(40, 3, 16, 16) * 1.5
    ncm = torch.cdist(F.normalize(m.features(x), dim=-1), m.means).argmin(1)
    assert (m.predict(x).argmax(1) == ncm).float().mean() > 0.9


def test_new_tasks_append_classes_and_never_change_old_ones():
    m = make()
    m.after_task(task(0))
    means, prec = m.means.clone(), m.precisions.clone()
    m.after_task(task(1))
    assert m.means.shape[0] == 4 and torch.equal(m.means[:2], means) and torch.equal(m.precisions[:2], prec)
    assert m.parameter_groups() == []
