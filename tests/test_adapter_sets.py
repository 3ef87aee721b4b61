"""AdapterSet: the fused multi-set forward equals a loop over individual BottleneckAdapters;
plain ids are the pretrained forward; removal, repr, build-time checks, state round trip."""

import copy

import pytest
import torch

from clbench.adapters import AdapterSet, BottleneckAdapter
from clbench.adapters.adapter_sets import CURRENT, NAMES, PLAIN
from clbench.engine.state import restore_state
from clbench.errors import ConfigError

from conftest import tiny_vit

X = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def randomise(adapters, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in NAMES:
            for prefix in ("", "frozen_"):
                p = getattr(adapters, prefix + name)
                if p is not None:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))


def built(n_frozen=3, depth=3, rank=4):
    bb = tiny_vit(depth=depth)
    sets = AdapterSet(bb, rank=rank).eval()
    for _ in range(n_frozen):
        sets.add_current()
        sets.freeze_current()
    sets.add_current()
    randomise(sets)
    return bb, sets


def one_adapter_features(weights, k, depth=3, rank=4):
    """The same images through a fresh backbone with one BottleneckAdapter holding set k."""
    bb = tiny_vit(depth=depth)
    single = BottleneckAdapter(bb, rank=rank).eval()
    with torch.no_grad():
        for name, w in zip(NAMES, weights):
            getattr(single, name).copy_(w[k])
    return bb(X)


def test_the_fused_forward_over_sets_equals_a_loop_over_bottleneck_adapters():
    bb, sets = built()
    ids = [2, CURRENT, 0, 1]
    weights = sets.stack(ids)
    fused = sets.features(X, ids)
    assert fused.shape == (4, 3, 32)
    for g in range(len(ids)):
        torch.testing.assert_close(fused[g], one_adapter_features(weights, g), atol=1e-5, rtol=1e-5)
    # chunked into several passes (two sets per pass): the same features
    torch.testing.assert_close(sets.features(X, ids, max_images=6), fused, atol=1e-6, rtol=1e-6)


def test_plain_ids_and_idle_hooks_are_the_pretrained_forward_bit_for_bit():
    bb, sets = built()
    reference = tiny_vit(depth=3)(X)
    assert torch.equal(bb(X), reference)  # outside using(): hooks idle
    feats = sets.features(X, [PLAIN, 1])
    assert torch.equal(feats[0], sets.features(X, [PLAIN])[0])
    torch.testing.assert_close(feats[0], reference, atol=1e-6, rtol=0)
    with sets.disabled(), sets.using(sets.stack([1])):
        assert torch.equal(bb(X), reference)
    sets.remove()
    with pytest.raises(RuntimeError):
        sets.features(X, [0])
    assert torch.equal(bb(X), reference)


def test_only_the_current_set_gets_gradients_and_freezing_appends_it():
    bb, sets = built(n_frozen=2)
    sets.train()
    loss = sets.features(X, [CURRENT, 0]).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in sets.current())
    assert all(not p.requires_grad and p.grad is None for p in sets.frozen())
    current = [p.detach().clone() for p in sets.current()]
    sets.freeze_current()
    assert sets.n_frozen == 3 and not sets.has_current
    assert all(torch.equal(f[2], c) for f, c in zip(sets.frozen(), current))


def test_a_state_restores_into_a_fresh_set_and_reprs_and_checks_are_clear():
    bb, sets = built()
    state = copy.deepcopy(sets.state_dict())
    other = tiny_vit(depth=3)  # injections hold their backbone weakly
    fresh = AdapterSet(other, rank=4).eval()
    restore_state(fresh, state)
    assert fresh.n_frozen == 3 and fresh.has_current and fresh.down_weight.requires_grad
    torch.testing.assert_close(fresh.features(X, [0, 1, 2, CURRENT]), sets.features(X, [0, 1, 2, CURRENT]))
    assert "vit.blocks.0.norm2: forward_pre" in repr(sets) and "frozen_sets=3" in repr(sets)
    with pytest.raises(ConfigError, match="vit.blocks.7"):
        AdapterSet(tiny_vit(depth=3), blocks=[7])
    with pytest.raises(ConfigError, match="already has a AdapterSet"):
        AdapterSet(bb, rank=4)
    with pytest.raises(IndexError):
        sets.stack([5])
