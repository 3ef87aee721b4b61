"""L2P: key matching, the surrogate term, the prompt-token head, prompt masking."""

import torch

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
