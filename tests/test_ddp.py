"""Multi-process runs (torchrun + DDP, gloo on CPU): batches, shards, and a two-process run
whose record matches a one-process run."""

import json
import subprocess
import sys

import numpy as np
import pytest

from clbench.engine.dist import SingleProcess
from clbench.engine.loaders import TaskBatches
from clbench.experiment import DataCache, execute, plan

from conftest import TINY

# no augmentation: a two-process run then computes what a one-process run does, up to the
# order of floating-point sums (its ranks draw their own augmentations)
DDP_TINY = [(k, v) for k, v in TINY if k != "engine.progress"] + [("benchmark.augment", False)]
NO_DROPOUT = ("aper-adapter.adapter_dropout", 0)  # dropout masks depend on the per-rank batch shape

LAUNCH = '''
import sys
from clbench.methods.simplecil import SimpleCIL
from clbench.registry import register_method


@register_method("unreduced")
class Unreduced(SimpleCIL):
    """SimpleCIL that forgets to sum its class statistics over ranks."""

    def after_task(self, ctx):
        ctx.all_reduce = lambda t: t
        super().after_task(ctx)


from clbench.cli import main
sys.exit(main())
'''


def _rank(rank: int, world: int) -> SingleProcess:
    d = SingleProcess()
    d.rank, d.world_size = rank, world
    return d


def test_rank_batches_together_are_the_one_process_batches():
    data = list(range(37))
    for epoch in (0, 3):
        single = TaskBatches(data, 8, seed=5000, rank=0, world=1, drop_last=False)
        single.start(epoch)
        ranks = [TaskBatches(data, 4, seed=5000, rank=r, world=2, drop_last=False) for r in (0, 1)]
        for r in ranks:
            r.start(epoch)
        expected = [sorted(b) for b in single]
        together = [sorted(a + b) for a, b in zip(*ranks)]
        # equal, but for the one duplicate DistributedSampler pads so 37 samples split over 2 ranks
        assert together[:-1] == expected[:-1]
        assert set(expected[-1]) < set(together[-1]) and len(together[-1]) == len(expected[-1]) + 1
        assert sorted(i for b in single for i in b) == data
    resumed = TaskBatches(data, 8, seed=5000, rank=0, world=1, drop_last=False)
    resumed.start(3, skip=2)  # a resumed epoch goes on at its third batch
    assert list(resumed) == list(single)[2:] and len(resumed) == len(single) - 2


def test_evaluation_shards_cover_every_sample_once():
    for n, world in ((10, 3), (2, 4), (7, 1)):
        shards = [list(_rank(r, world).shard(n)) for r in range(world)]
        assert sorted(i for s in shards for i in s) == list(range(n))


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    out = tmp_path / "ddp"
    script = tmp_path / "launch.py"
    script.write_text(LAUNCH)
    sets = [a for k, v in DDP_TINY for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "run", "--methods", "simplecil,lora,aper-adapter,fecam,ranpac,ease,mos,unreduced", "--no-progress",
           "--output-dir", str(out), *sets, "--set", f"{NO_DROPOUT[0]}={NO_DROPOUT[1]}"]
    # one launch (process startup is most of the time): good methods, then one whose
    # statistics differ between ranks, which must stop the run with a clear error
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "After task 1 the ranks hold different values of ['prototypes.means']" in result.stderr, result.stderr[-3000:]

    # RanPAC's Gram matrices are summed over ranks (the rank check passed) and its λ search
    # scores the features of both shards (the whole task); the split draws per shard, so
    # only the statistics methods are compared with one process
    ranpac = json.loads(next((out / "shapes" / "ranpac").iterdir()).joinpath("record.json").read_text())
    assert ranpac["status"] == "complete" and ranpac["engine"]["world_size"] == 2
    for t in ranpac["tasks"]:
        assert t["method_log"]["lambda_fit_samples"] + t["method_log"]["lambda_val_samples"] == t["n_train"]
    cache = DataCache()
    # mos: its orthogonality loss is a contrast within each rank's batch, so it is compared for
    # agreement between the ranks only (the run completes: the trainer checks the ranks agree)
    (mos,) = list((out / "shapes" / "mos").iterdir())
    assert json.loads((mos / "record.json").read_text())["status"] == "complete"
    for method in ("simplecil", "lora", "aper-adapter", "fecam", "ease"):
        (dirs,) = [list((out / "shapes" / method).iterdir())]
        assert len(dirs) == 1  # rank 0 alone writes: one run directory, one record
        ddp = json.loads((dirs[0] / "record.json").read_text())
        assert ddp["status"] == "complete" and ddp["engine"]["world_size"] == 2
        assert not (dirs[0] / "checkpoint").exists()
        extra = [NO_DROPOUT] if method == "aper-adapter" else []
        (planned,) = plan([method], "shapes", [1993], None, DDP_TINY + extra + [
            ("engine.output_dir", str(tmp_path / "one")), ("engine.progress", False)])
        one = execute(planned, cache=cache)
        # sharded evaluation counts each test sample once; reduced statistics and averaged
        # gradients give the one-process model
        assert ddp["test_counts"] == one["test_counts"]
        for a, b in zip(ddp["accuracy_matrix"], one["accuracy_matrix"], strict=True):
            assert np.allclose(a, b, atol=100 / 16 + 1e-9), method
        for a, b in zip(ddp["tasks"], one["tasks"]):
            assert a["steps"] == b["steps"]
            if method == "ease":  # its adapters' dropout draws differ between ranks and one process
                continue
            for key in b["train_logs"]:
                assert a["train_logs"][key] == pytest.approx(b["train_logs"][key], rel=1e-5)
