"""Loss landscapes: analytic toy models for the geometry, tiny runs for the endpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

from clbench.errors import ConfigError, DamagedFileError, DataError
from clbench.experiment import DataCache, execute, plan
from clbench.report import landscape as ls
from clbench.report.landscape_run import compute, save
from clbench.resolve import config_from_record


class Toy(nn.Module):
    """y = w·x + b, plus tensors that must not be interpolated blindly."""

    def __init__(self, seed: int, grown: int = 2):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(3, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, 3, generator=g))
            self.lin.bias.copy_(torch.randn(1, generator=g))
        self.idle = nn.Parameter(torch.randn(4, generator=g))  # differs, never used by forward
        self.same = nn.Parameter(torch.ones(2))  # used, equal in every solution
        self.head = nn.Parameter(torch.arange(grown * 2, dtype=torch.float).reshape(grown, 2) * (seed + 1))  # grows
        self.register_buffer("steps", torch.tensor(seed))  # integer: never interpolated

    def forward(self, x):
        return self.lin(x).squeeze(-1) + 0 * self.same.sum() + 0 * self.head.sum()


def mse(model, X, y):
    with torch.no_grad():
        return float(((model(X) - y) ** 2).mean())


def test_line_loss_is_the_analytic_quadratic_and_endpoints_are_exact():
    X, y = torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), torch.randn(50)
    a_model, b_model = Toy(1), Toy(2)
    target = Toy(2)
    tensors = ls.named_tensors(target)
    sel = ls.select([ls.named_tensors(a_model), ls.named_tensors(b_model)], tensors)
    assert set(sel.names) == {"lin.weight", "lin.bias", "idle", "head"}  # 'same' is equal, 'steps' an integer
    live = ls.LiveBlocks(tensors, sel)
    a, b = ls.snapshot(ls.named_tensors(a_model), sel), ls.snapshot(ls.named_tensors(b_model), sel)
    lams = np.linspace(-0.5, 1.5, 9)
    got = ls.scan_line(live, a, b, lams, lambda: mse(target, X, y))
    # r(λ) = r_a + λ (r_b − r_a) is linear in λ, so L(λ) = mean(r_a²) + 2λ mean(r_a d) + λ² mean(d²)
    with torch.no_grad():
        ra, rb = a_model(X) - y, b_model(X) - y
    d = rb - ra
    exact = [float((ra**2).mean() + 2 * lam * (ra * d).mean() + lam**2 * (d**2).mean()) for lam in lams]
    assert got == pytest.approx(exact, rel=1e-5, abs=1e-6)
    assert got[2] == mse(a_model, X, y) and got[6] == mse(b_model, X, y)  # λ = 0 and 1, bit for bit
    assert torch.equal(target.lin.weight, b_model.lin.weight)  # restored after the scan


def test_plane_is_orthonormal_and_the_quadratic_bowl_is_reproduced():
    torch.manual_seed(0)
    star = torch.randn(5)
    a, b, c = ([torch.randn(5)] for _ in range(3))
    plane = ls.plane_through(a, b, c)
    assert ls.dot(plane.e1, plane.e1) == pytest.approx(1) and ls.dot(plane.e2, plane.e2) == pytest.approx(1)
    assert ls.dot(plane.e1, plane.e2) == pytest.approx(0, abs=1e-7)
    # the three solutions sit at their coordinates, with true distances
    for point, (x, y) in zip((a, b, c), plane.coords):
        assert torch.allclose(plane.point(x, y)[0], point[0], atol=1e-6)
    assert plane.coords[1, 0] == pytest.approx(float((b[0] - a[0]).norm()))
    assert np.hypot(*plane.coords[2]) == pytest.approx(float((c[0] - a[0]).norm()))
    param = nn.Parameter(torch.zeros(5))
    live = ls.LiveBlocks({"p": param}, ls.Selection(["p"], [(slice(None),)], []))
    xs, ys = ls.plane_grid(plane.coords, 5, 0.25)
    assert xs[0] < 0 < plane.coords[1, 0] < xs[-1] and ys[0] < min(0, plane.coords[2, 1])
    got = np.array(ls.scan_plane(live, plane, xs, ys, lambda: float(((param.detach() - star) ** 2).sum())))
    # L(x, y) = |a − θ*|² + 2x e1·(a − θ*) + 2y e2·(a − θ*) + x² + y²  (e1, e2 orthonormal)
    off = [a[0] - star]
    X, Y = np.meshgrid(xs, ys)
    exact = ls.dot(off, off) + 2 * X * ls.dot(plane.e1, off) + 2 * Y * ls.dot(plane.e2, off) + X**2 + Y**2
    assert got == pytest.approx(exact, rel=1e-4, abs=1e-5)
    assert torch.equal(param, torch.zeros(5))  # restored
    with pytest.raises(ValueError, match="collinear"):
        ls.plane_through(a, b, [2 * b[0] - a[0]])


def test_selection_skips_unused_tensors_and_handles_grown_heads():
    a, b, target = Toy(1, grown=2), Toy(2, grown=3), Toy(2, grown=3)
    tensors = ls.named_tensors(target)
    snaps = [ls.named_tensors(a), ls.named_tensors(b)]
    target.same.requires_grad_(False)  # frozen tensors are probed too, and stay frozen
    used = ls.used_by(tensors, lambda: target(torch.randn(4, 3)))
    assert used == {"lin.weight", "lin.bias", "same", "head"}  # 'idle' never reaches the output
    assert not target.same.requires_grad and target.idle.requires_grad
    sel = ls.select(snaps, tensors, grown="target")
    assert "head" in sel.from_target and "head" not in sel.names
    sel = ls.select(snaps, tensors, grown="interpolate")
    (k,) = [i for i, n in enumerate(sel.names) if n == "head"]
    assert sel.regions[k] == (slice(0, 2), slice(0, 2))  # the two rows both solutions have
    live = ls.LiveBlocks(tensors, sel)
    with live.restoring():
        live.set(ls.snapshot(snaps[0], sel))
        assert torch.equal(target.head[:2], a.head) and torch.equal(target.head[2], b.head[2])  # row 3 from the target
    assert torch.equal(target.head, b.head)


# ----------------------------------------------------------------------------- tiny runs

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape") / "results"
    cache = DataCache()
    overrides = TINY + [("engine.output_dir", str(out))]
    recs = {}
    for method in ("lora", "finetune"):
        (planned,) = plan([method], "shapes", [1993], None, overrides)
        recs[method] = execute(planned, cache=cache)
    return recs


def test_config_from_record_reproduces_the_resolved_config(runs):
    rec = runs["lora"]
    cfg = config_from_record(rec)
    assert cfg.to_dict() == rec["config"] and cfg.method == "lora" and cfg.seed == 1993
    assert config_from_record(rec, [("engine.device", "cpu")]).engine.device == "cpu"


def test_lora_endpoints_reproduce_the_recorded_accuracy_and_the_plane_is_saved(runs, tmp_path):
    rec = runs["lora"]
    result = compute(Path(rec["run_dir"]), line=(0, 1), plane=(0, 1, 2), lambdas=np.linspace(0, 1, 3), grid=2,
                     device="cpu")
    line = result.line
    # λ = 1 is the task-2 solution: its accuracy on tasks 1 and 2 is the recorded row
    assert line["acc"][-1] == pytest.approx(rec["accuracy_matrix"][1], abs=1e-9)
    # λ = 0, over the classes seen at task 1, is the task-1 solution (lora never changes old head rows)
    assert line["acc_inner"][0] == pytest.approx(rec["accuracy_matrix"][0], abs=1e-9)
    assert [c["match"] for c in result.meta["line"]["endpoints"]] == [True, True]
    # merged weight updates are interpolated, not the factors (idle while merged)
    names = list(result.meta["line"]["interpolated"])
    assert len(names) == 6 and all(n.endswith("qkv.weight") for n in names)  # one per block
    assert any(n.startswith("adapter.A") for n in result.meta["line"]["from_target"])
    # the plane's third solution is its target: the recorded row, exactly
    assert result.plane["solution_acc"][2] == pytest.approx(rec["accuracy_matrix"][2], abs=1e-9)
    assert result.plane["acc"].shape == (3, 2, 2) and np.isfinite(result.plane["loss"]).all()
    files = save(result, tmp_path / "ls")
    for stem in ("line_T1-T2", "plane_T1-T2-T3"):
        assert (tmp_path / "ls" / f"{stem}.csv").is_file() and (tmp_path / "ls" / f"{stem}.npz").is_file()
    assert {p.suffix for p in files} >= {".png", ".pdf", ".csv", ".npz", ".json"}
    assert (tmp_path / "ls" / "plane_T1-T2-T3_loss.png").is_file() and (tmp_path / "ls" / "line_T1-T2.pdf").is_file()
    with np.load(tmp_path / "ls" / "line_T1-T2.npz") as data:
        assert np.array_equal(data["acc"], line["acc"])


def test_finetune_endpoints_reproduce_the_recorded_accuracy(runs):
    rec = runs["finetune"]
    run_dir = Path(rec["run_dir"])
    # the later head for every point (the default): exact at λ = 1 over the later task's classes
    result = compute(run_dir, line=(0, 1), plane=None, lambdas=np.array([0.0, 1.0]), device="cpu")
    assert result.line["acc"][-1] == pytest.approx(rec["accuracy_matrix"][1], abs=1e-9)
    assert "head.weight" in result.meta["line"]["from_target"] and result.meta["line"]["endpoints"][0]["match"]
    # fine-tuning moves the old head rows too; interpolating them makes λ = 0 the task-1 solution
    result = compute(run_dir, line=(0, 1), plane=None, lambdas=np.array([0.0, 1.0]), grown="interpolate", device="cpu")
    assert [c["match"] for c in result.meta["line"]["endpoints"]] == [True, True]
    assert result.line["acc_inner"][0] == pytest.approx(rec["accuracy_matrix"][0], abs=1e-9)
    names = result.meta["line"]["interpolated"]
    assert "head.weight" in names and "backbone.vit.blocks.0.attn.qkv.weight" in names


def test_landscape_errors_name_the_fix(runs, tmp_path):
    run_dir = Path(runs["lora"]["run_dir"])
    with pytest.raises(ConfigError, match="task 4 does not exist"):
        compute(run_dir, line=(0, 3), plane=None)
    with pytest.raises(ConfigError, match="earlier then a later"):
        compute(run_dir, line=(1, 0), plane=None)
    import json
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    rec = json.loads((copy / "record.json").read_text())
    rec["tasks"][0]["state"] = None  # as with engine.save_task_state=never
    (copy / "record.json").write_text(json.dumps(rec))
    with pytest.raises(DataError, match="save_task_state=always"):
        compute(copy, line=(0, 1), plane=None)
    rec["tasks"][0]["state"] = runs["lora"]["tasks"][0]["state"]
    (copy / "record.json").write_text(json.dumps(rec))
    finetune = Path(runs["finetune"]["run_dir"]) / runs["finetune"]["tasks"][0]["state"]["file"]
    shutil.copyfile(finetune, copy / rec["tasks"][0]["state"]["file"])  # another method's state
    with pytest.raises(DamagedFileError, match=r"The task state .* does not fit a freshly built 'lora' \(state does "
                                               r"not fit LoRA: missing .*\); it was replaced or damaged"):
        compute(copy, line=(0, 1), plane=None)


def test_cli_landscape(runs, tmp_path):
    from typer.testing import CliRunner

    from clbench.cli import app

    out = tmp_path / "cli"
    runner = CliRunner()
    result = runner.invoke(app, ["landscape", runs["lora"]["run_dir"], "--points", "2", "--plane", "none", "--out",
                                 str(out), "--device", "cpu", "--no-progress"])  # the plane: tested above
    assert result.exit_code == 0, result.output
    assert result.output.count("matches the record") == 2
    assert (out / "line_T1-T2.png").is_file() and (out / "line_T1-T2.csv").is_file() and (out / "landscape.json").is_file()
    bad = runner.invoke(app, ["landscape", runs["lora"]["run_dir"], "--tasks", "0,1"])
    assert bad.exit_code == 2 and "counts tasks from 1" in bad.output and "Traceback" not in bad.output
