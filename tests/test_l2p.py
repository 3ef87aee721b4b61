"""L2P: key matching, the surrogate term, the prompt-token head, prompt masking."""

import pytest
import torch

from clbench.adapters import PromptTokens
from clbench.errors import ConfigError
from clbench.testing import separable_images

from prompt_fixtures import build, task_ctx


def _started(**options):
    method, info = build("l2p", **options)
    task = task_ctx(info, 0)
    method.train()
    method.before_task(task)
    return method, task


def test_surrogate_moves_only_the_selected_keys_and_the_query_is_detached():
    method, task = _started(pool_size=6, top_k=2)
    x = task.x.clone().requires_grad_(True)
    out = method.training_step(x, task.y, task)
    out.loss.backward(retain_graph=True)  # the matching term alone
    q = method.query(task.x)
    selected = set(method._select(q, train=True)[1].flatten().tolist())
    moved = {i for i in range(6) if method.keys.grad[i].abs().sum() > 0}
    assert moved == selected and len(selected) < 6
    assert x.grad is None and method.prompts.grad is None  # the query is detached from the inputs
    sim = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(method.keys, dim=1).t()
    expected = -0.1 * sim.gather(1, method._select(q, train=True)[1]).sum() / len(x)  # Σ over the N keys / B
    torch.testing.assert_close(out.loss, expected)
    out.logits.sum().backward()  # the prompted pass does reach the prompts (and the inputs)
    assert x.grad is not None and method.prompts.grad.abs().sum() > 0


def test_head_reads_the_mean_of_the_prompt_outputs():
    method, task = _started(pool_size=6, top_k=2, prompt_length=3)
    vit = method.backbone.vit
    x = task.x[:3]
    idx = torch.tensor([[0, 5], [1, 2], [4, 3]])
    prompts = method.prompts[idx].flatten(1, 2)
    seq = vit._pos_embed(vit.patch_embed(x))  # prompts after [CLS], without position embedding
    seq = vit.norm(vit.blocks(torch.cat([seq[:, :1], prompts, seq[:, 1:]], dim=1)))
    torch.testing.assert_close(method.features(x, idx), seq[:, 1:7].mean(dim=1), atol=1e-5, rtol=1e-5)


def test_prompt_mask_trains_the_task_slots_and_shared_pool_copies_them():
    method, info = build("l2p", pool_size=6, top_k=2, prompt_mask=True, shared_pool=True)
    for t in range(3):
        task = task_ctx(info, t)
        before = method.prompts.detach().clone()
        method.before_task(task)
        if t > 0:  # the task's slots start as a copy of the previous task's
            assert torch.equal(method.prompts[2 * t:2 * t + 2], before[2 * t - 2:2 * t])
        assert method._select(method.query(task.x), train=True)[1].tolist() == [[2 * t, 2 * t + 1]] * len(task.x)
    beyond, info4 = build("l2p", n_tasks=4, pool_size=6, top_k=2, prompt_mask=True)
    beyond.before_task(task_ctx(info4, 3))  # slots 6-7 do not exist: key matching, as officially
    assert beyond._forced is None


def _block0_inputs(method, x, idx):
    """What block 0 receives in L2P's prompted forward of prompts ``idx``."""
    seen = []
    handle = method.backbone.vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    try:
        method.features(x, idx)
    finally:
        handle.remove()
    return seen[0]


def test_cls_prompt_position_adds_the_cls_position_embedding_to_every_prompt_token():
    method, _ = build("l2p", pool_size=6, top_k=2, prompt_length=3, prompt_pos_embed="cls")
    plain, _ = build("l2p", pool_size=6, top_k=2, prompt_length=3)  # same seed: same prompts and backbone
    vit = method.backbone.vit
    x, idx = separable_images(0, 3, 1, 16, 0)[0], torch.tensor([[0, 5], [1, 2], [4, 3]])
    with torch.no_grad():
        vit.pos_embed[:, 0] += 0.5  # a clearly non-zero [CLS] position embedding
        plain.backbone.vit.pos_embed.copy_(vit.pos_embed)
    prompts = method.prompts[idx].flatten(1, 2)
    seq = _block0_inputs(method, x, idx)  # [CLS, prompts, patches]
    torch.testing.assert_close(seq[:, 1:7], prompts + vit.pos_embed[:, :1])
    torch.testing.assert_close(_block0_inputs(plain, x, idx)[:, 1:7], prompts)  # 'none': no position embedding
    torch.testing.assert_close(seq[:, 7:], _block0_inputs(plain, x, idx)[:, 7:])  # patches unchanged
    assert not torch.allclose(method.features(x, idx), plain.features(x, idx))
    with torch.no_grad():  # without a [CLS] position embedding the two settings are one
        vit.pos_embed[:, 0] = 0
        plain.backbone.vit.pos_embed[:, 0] = 0
    assert torch.equal(method.features(x, idx), plain.features(x, idx))

    no_cls_pos = build("l2p", pool_size=6, top_k=2)[0].backbone
    no_cls_pos.vit.no_embed_class = True
    with pytest.raises(ConfigError, match="prompt_pos_embed=none"):
        PromptTokens(no_cls_pos, position="cls")

