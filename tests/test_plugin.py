"""A method registered from outside the package (entry point) runs end to end."""

import json
import os
import subprocess
import sys
import textwrap

PLUGIN = '''
"""An example third-party method: a linear probe on frozen features."""
from clbench.heads import IncrementalLinear
from clbench.methods import CLMethod, StepOutput
from clbench.registry import register_method


@register_method("linear-probe")
class LinearProbe(CLMethod):
    """Linear head on the frozen backbone (example plugin)."""

    defaults = {"train.lr": 0.1}

    def __init__(self, cfg, backbone, info):
        super().__init__(cfg, backbone, info)
        self.freeze_backbone()
        self.head = IncrementalLinear(backbone.embed_dim)

    def before_task(self, task):
        self.head.grow(task.hi)

    def training_step(self, x, y, task):
        return StepOutput(self.head(self.backbone(x)))

    def predict(self, x):
        return self.head(self.backbone(x))
'''


def test_entry_point_plugin_runs_end_to_end(tmp_path):
    pkg = tmp_path / "site"
    (pkg / "example_clbench_plugin").mkdir(parents=True)
    (pkg / "example_clbench_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    dist = pkg / "example_clbench_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: example-clbench-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[clbench.plugins]\nexample = example_clbench_plugin\n")
    env = {**os.environ, "PYTHONPATH": str(pkg)}
    listing = subprocess.run([sys.executable, "-m", "clbench.cli", "list"], capture_output=True, text=True, env=env)
    assert "linear-probe" in listing.stdout and "example plugin" in listing.stdout
    out = tmp_path / "results"
    result = subprocess.run(
        [sys.executable, "-m", "clbench.cli", "run", "--methods", "linear-probe", "--output-dir", str(out),
         "--set", "benchmark.n_classes=4", "--set", "benchmark.n_tasks=2", "--set", "train.epochs=1", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("shapes/linear-probe/*/record.json")
    record = json.loads(path.read_text())
    assert record["status"] == "complete" and record["config"]["train"]["lr"] == 0.1
    assert record["environment"]["plugins"] == [{
        "kind": "method", "name": "linear-probe", "distribution": "example-clbench-plugin", "version": "0.1",
        "entry_point": "example = example_clbench_plugin", "module": "example_clbench_plugin",
        "file": str(pkg / "example_clbench_plugin" / "__init__.py")}]
    assert record["tasks"][1]["trainable_params"] == 96 * 4 + 4
