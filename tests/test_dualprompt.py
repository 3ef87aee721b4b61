"""DualPrompt: per-sample key/value prefixes, task-id training, the compatibility flags."""

import torch

from clbench.experiment import execute, plan

from conftest import TINY
from prompt_fixtures import build, run_tasks, task_ctx


def test_sample_b_gets_exactly_its_own_entry_as_key_and_value_prefixes():
    method, _ = build("dualprompt", pool_size=4)
    idx = torch.tensor([2, 0, 3, 2, 1])
    prefixes = method.prefixes(idx)
    assert sorted(prefixes) == [0, 1, 2, 3, 4]
    for i, block in enumerate((0, 1)):  # G-prompt: shared by all samples
        keys, values = prefixes[block]
        assert torch.equal(keys[0], method.g_prompt[i, 0]) and torch.equal(values[0], method.g_prompt[i, 1])
    for i, block in enumerate((2, 3, 4)):
        keys, values = prefixes[block]
        for b, entry in enumerate(idx.tolist()):
            assert torch.equal(keys[b], method.e_prompt[i, entry, 0])
            assert torch.equal(values[b], method.e_prompt[i, entry, 1])


def _diverse(method, x):
    with torch.no_grad():  # keys at the samples' own queries: every sample selects a different entry
        method.keys[:] = method.query(x)


def test_predictions_do_not_depend_on_the_batch_a_sample_sits_in():
    for bug in (False, True):
        method, info = build("dualprompt", pool_size=4, prefix_reshape_bug=bug)
        run_tasks(method, 2, steps=1)
        x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        _diverse(method, x)
        with torch.no_grad():
            batched = method.predict(x)
            alone = torch.cat([method.predict(x[i:i + 1]) for i in range(4)])
            reordered = method.predict(x.flip(0)).flip(0)
        if not bug:
            torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(reordered, alone, atol=1e-5, rtol=1e-4)
        else:  # the ports' reshape bug makes a prediction depend on its batch neighbours
            assert not torch.allclose(batched, alone, atol=1e-3)


def test_training_uses_the_task_entry_and_pulls_only_its_key():
    method, info = build("dualprompt", pool_size=4)
    run_tasks(method, 1)
    task = task_ctx(info, 1)
    method.train()
    method.before_task(task)
    assert torch.equal(method.e_prompt[:, 1], method.e_prompt[:, 0])  # shared pool: starts as task 0's
    out = method.training_step(task.x, task.y, task)
    (out.loss + out.logits.sum()).backward()
    moved = lambda g: [i for i in range(4) if g[i].abs().sum() > 0]  # noqa: E731
    assert moved(method.keys.grad) == [1]
    assert moved(method.e_prompt.grad.transpose(0, 1)) == [1]
    assert method.g_prompt.grad.abs().sum() > 0


def test_more_tasks_than_entries_fall_back_to_key_matching():
    method, info = build("dualprompt", n_tasks=3, pool_size=2)
    run_tasks(method, 3, steps=1)  # task 3 has no entry of its own: trains the matched one
    assert method._slot is None


def test_flags_are_recorded_as_noncomparable_in_the_run_record(tmp_path):
    overrides = TINY + [("benchmark.n_classes", 4), ("benchmark.n_tasks", 2), ("engine.output_dir", str(tmp_path)),
                        ("dualprompt.batchwise_prompt", "true"), ("dualprompt.prefix_reshape_bug", "true")]
    (run,) = plan(["dualprompt"], "shapes", [1], None, overrides)
    record = execute(run)
    assert record["comparable"] is False and len(record["noncomparable_reasons"]) == 2
    log = record["tasks"][-1]["method_log"]  # selection diagnostics: the engine passed the labels
    assert sum(log["selection_counts"]) == 4 * 8 and len(log["selection_task_acc_per_task"]) == 2
