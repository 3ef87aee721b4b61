"""Class orders (the orders PyCIL/PILOT seeds give), task splits and stream relabelling."""

import numpy as np
import pytest
import torch

from clbench.data.datasets import TensorImageDataset
from clbench.data.stream import ClassIncrementalStream, class_order, task_splits
from clbench.errors import ConfigError


@pytest.mark.parametrize("n, seed, first_ten", [
    (100, 1993, [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]),
    (200, 1993, [168, 136, 51, 9, 183, 101, 171, 99, 42, 159]),
    (200, 1995, [146, 198, 169, 126, 142, 183, 108, 86, 79, 35]),
    (300, 1993, [169, 221, 146, 296, 92, 229, 49, 70, 126, 77]),
    (345, 1993, [214, 80, 343, 268, 224, 97, 253, 55, 165, 170]),
])
def test_class_order_fixtures(n, seed, first_ten):
    assert class_order(n, seed)[:10].tolist() == first_ten


def test_sdlora_log_prefixes_and_natural_order():
    assert class_order(100, 1994)[:12].tolist() == [72, 6, 33, 96, 60, 94, 29, 40, 45, 66, 51, 8]
    assert class_order(200, 1996)[:4].tolist() == [92, 182, 15, 79]
    assert class_order(7, None).tolist() == list(range(7))


def test_task_splits():
    assert task_splits(200, 10, None) == [(i * 20, (i + 1) * 20) for i in range(10)]
    assert task_splits(100, 6, 50) == [(0, 50)] + [(50 + 10 * i, 60 + 10 * i) for i in range(5)]
    assert task_splits(345, 5, None)[-1] == (276, 345)
    with pytest.raises(ConfigError, match="divide evenly"):
        task_splits(100, 7, 12)


def test_uneven_tasks_are_an_error_that_names_init_cls():
    # 50 classes in 3 tasks used to become 16/17/17 silently
    with pytest.raises(ConfigError, match=r"init_cls=18 \(tasks of 18 \+ 2x16") as exc:
        task_splits(50, 3, None)
    assert "n_tasks among 2, 5, 10, 25" in str(exc.value)
    assert task_splits(50, 3, 18) == [(0, 18), (18, 34), (34, 50)]
    with pytest.raises(ConfigError, match="init_cls=16"):
        task_splits(100, 7, None)


def test_plan_rejects_uneven_tasks_before_any_write(tmp_path):
    from clbench.experiment import DataCache, plan

    with pytest.raises(ConfigError, match="benchmark.init_cls=18"):
        plan(["simplecil"], "shapes", [1], None, [("benchmark.n_classes", 50), ("benchmark.n_tasks", 3),
                                                  ("engine.output_dir", str(tmp_path / "out"))], DataCache())
    assert not (tmp_path / "out").exists()


def _dataset(labels):
    images = torch.arange(len(labels), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 2, 2).contiguous()
    return TensorImageDataset(images, np.array(labels))


def test_stream_relabels_and_accumulates_test_data():
    train = _dataset([0, 1, 2, 3, 0, 1, 2, 3])
    test = _dataset([3, 2, 1, 0, 3])
    stream = ClassIncrementalStream(train, test, np.array([2, 0, 3, 1]), n_tasks=2)
    assert [t.classes for t in stream.tasks] == [(2, 0), (3, 1)]
    task0 = stream.train_data(0)
    assert sorted(task0.targets.tolist()) == [0, 0, 1, 1]  # originals 2 and 0 -> new labels 0 and 1
    x, y = task0.__getitems__([0, 1])
    assert y.tolist() == stream.label_map[train.targets[task0.indices[:2]]].tolist()
    assert x[:, 0, 0, 0].tolist() == task0.indices[:2].tolist()  # images are the selected samples
    assert len(stream.test_data(0)) == 2 and len(stream.test_data(1)) == 5
    assert sorted(stream.train_data(1, cumulative=True).targets.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert stream.test_counts() == ([2, 3], [1, 1, 2, 1])
    assert stream.class_to_task.tolist() == [0, 0, 1, 1]


def test_stream_rejects_missing_classes_and_bad_orders():
    with pytest.raises(ConfigError, match=r"test split has no samples of class\(es\) \[1\]"):
        ClassIncrementalStream(_dataset([0, 1]), _dataset([0]), np.array([0, 1]), n_tasks=1)
    with pytest.raises(ConfigError, match="permutation"):
        ClassIncrementalStream(_dataset([0, 1]), _dataset([0, 1]), np.array([0, 0]), n_tasks=1)
