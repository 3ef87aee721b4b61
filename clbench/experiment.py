"""Planning and executing runs: validation up front, one record per run.

:func:`plan` resolves the configuration of every (method, seed) pair of a request (see
:mod:`clbench.resolve`) and checks names, keys, types, ranges, the output directory and the
weights before anything runs, so bad input fails fast and leaves no partial record.
:func:`execute` runs one planned run; :func:`resume` continues one that was stopped, from
its checkpoint.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from . import comparability
from .backbones import _resolve_spec, check_bundled, create_backbone
from .data.stream import task_splits
from .config import RESULT_NEUTRAL_ENGINE, BackboneConfig, RunConfig
from .engine.checkpoint import Checkpointer, ResumePoint
from .engine.dist import SingleProcess
from .engine.dist import current as current_dist
from .engine.loggers import build_loggers, check_loggers
from .engine.progress import ProgressReporter
from .engine.runtime import engine_summary, resolve_device, resolve_precision, seed_everything
from .engine.trainer import Trainer
from .metrics import stability_plasticity
from .errors import ConfigError, DataError, OutputError, RegistryError, TrainingDiverged, WeightsError
from .efficiency import stream_efficiency
from .presets import find_preset
from .records import RunRecorder, ensure_writable, header, jsonable, load_record, new_run_dir, save_state
from .registry import BENCHMARKS, METHODS
from .resolve import Override, PlannedRun, config_from_record, resolve
from .weights import check_available

CHECKPOINT_DIR = "checkpoint"


def plan(methods: Sequence[str], benchmark: str, seeds: Sequence[int], preset: str | None = None,
         overrides: Sequence[Override] = (), cache: DataCache | None = None, *,
         file_overrides: Sequence[Override] = (), write_check: bool = True) -> list[PlannedRun]:
    """Resolve and validate every run of a request before any of them starts.

    ``overrides`` are ``--set`` values, ``file_overrides`` those of a ``--config`` file
    (applied first). Checks names, keys, types, ranges, devices, weights and the benchmark
    data (loaded into ``cache``, which :func:`execute` reuses) before the first write, so bad
    input leaves nothing behind. ``write_check=False`` (``run --dry-run``) leaves the output
    directory untouched (proving it writable creates it).
    """
    if not methods:
        raise ConfigError("No methods given. Pass --methods, e.g. --methods sdlora,inflora (see 'clbench list').")
    runs = [resolve(m, benchmark, s, preset, overrides, methods, file_overrides=file_overrides)
            for m in methods for s in seeds]
    for run in runs:  # every input check first, then the first write
        cfg = run.config
        resolve_precision(cfg.engine.precision, resolve_device(cfg.engine.device))
        check_loggers(cfg.engine.loggers)
        _check_weights(cfg.backbone)
        if cache is not None:
            bench, data = cache.get(cfg)
            task_splits(len(data.class_names), cfg.benchmark_cfg.n_tasks, cfg.benchmark_cfg.init_cls)
            check_training_steps(cfg, bench.stream(data, cfg.benchmark_cfg, cfg.seed))
    for out in {run.config.engine.output_dir for run in runs} if write_check else ():
        ensure_writable(Path(out))
    return runs


def check_training_steps(cfg: RunConfig, stream: Any) -> None:
    """A method that trains must take at least one optimisation step on every task: refuse
    a run in which a task's training data give no batch (none at all, or fewer samples than
    ``train.batch_size`` with ``train.drop_last``), instead of recording a run that did not train."""
    method_cls = METHODS.get(cfg.method)
    train = cfg.train
    for task in stream.tasks:
        if not method_cls.trains_on_task(cfg.method_cfg, task.index):
            continue
        n = len(stream.train_data(task.index, cumulative=method_cls.cumulative_data, augment=False))
        if n == 0 or (train.drop_last and n < train.batch_size):
            fix = (f"--set train.batch_size={max(1, n)} or --set train.drop_last=false" if n else
                   "choose a benchmark setting that gives every task training data")
            raise ConfigError(
                f"Task {task.index + 1} of {cfg.benchmark} has {n} training samples, which with train.batch_size="
                f"{train.batch_size}{' and train.drop_last=true' if train.drop_last else ''} gives no training step: "
                f"'{cfg.method}' would record a run that did not train. Fix it, e.g. {fix}.")


def _check_weights(cfg: BackboneConfig) -> None:
    """A missing local weights file is an input error: report it before any run starts."""
    timm_name, _, bundled = _resolve_spec(cfg.name)
    if cfg.weights == "auto":
        check_bundled(cfg.name, bundled)
    if cfg.weights in ("auto", "hub") and bundled is None:
        check_available(timm_name, cfg.name)  # offline and not cached: say what to download, before any run
    if cfg.weights not in ("auto", "none", "hub") and not Path(cfg.weights).expanduser().exists():
        raise WeightsError(
            f"Weights file {cfg.weights} for backbone '{cfg.name}' does not exist. Check the path in "
            f"backbone.weights, or use --set backbone.weights=auto to use the Hugging Face cache."
        )


class DataCache:
    """Loads each benchmark configuration once per process (runs of several methods share it)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, config: RunConfig) -> Any:
        bench = BENCHMARKS.get(config.benchmark)()
        key = repr((config.benchmark, dataclasses.replace(config.benchmark_cfg, order_seed=None, class_order="natural")))
        if key not in self._data:
            self._data[key] = bench.load(config.benchmark_cfg)
        return bench, self._data[key]


def build(cfg: RunConfig, cache: DataCache | None = None) -> tuple[Any, Any, Any]:
    """(benchmark data, stream, freshly built method) for a resolved config, seeded."""
    from .methods.base import StreamInfo

    bench, data = (cache or DataCache()).get(cfg)
    stream = bench.stream(data, cfg.benchmark_cfg, cfg.seed)
    seed_everything(cfg.seed, cfg.engine.deterministic)
    backbone = create_backbone(cfg.backbone)
    info = StreamInfo(stream.n_classes, tuple((t.lo, t.hi) for t in stream.tasks))
    return data, stream, METHODS.get(cfg.method)(cfg.method_cfg, backbone, info)


def _progress_for(progress: ProgressReporter | None, dist: SingleProcess) -> ProgressReporter:
    """Rank 0 shows progress; other ranks stay silent."""
    if progress is None or not dist.is_main:
        return ProgressReporter(Console(quiet=True), enabled=False)
    return progress


def execute(run: PlannedRun, progress: ProgressReporter | None = None, cache: DataCache | None = None,
            on_task: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Execute one planned run and return its final record.

    Under torchrun every rank calls this; rank 0 creates the run directory and writes."""
    cfg = run.config
    dist = current_dist(resolve_device(cfg.engine.device))
    progress = _progress_for(progress, dist)
    data, stream, method = build(cfg, cache)
    check_training_steps(cfg, stream)
    _flag_departures(method, cfg, run.preset, progress)
    backbone = method.backbone
    device = dist.device(resolve_device(cfg.engine.device))
    made = str(new_run_dir(Path(cfg.engine.output_dir), cfg.benchmark, cfg.method, cfg.seed)) if dist.is_main else None
    run_dir = Path(dist.broadcast_object(made))
    engine_info = engine_summary(device, resolve_precision(cfg.engine.precision, device))
    head = header(run, stream, data, backbone, engine_info, dist.world_size, run_dir)
    head.update(comparable=not method.noncomparable, noncomparable_reasons=list(method.noncomparable))
    recorder = RunRecorder(run_dir, head, write=dist.is_main)
    return _train(cfg, stream, method, recorder, dist, progress, on_task, None)


def resume(run_dir: Path | str, progress: ProgressReporter | None = None, cache: DataCache | None = None,
           overrides: Sequence[Override] = (), on_task: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Continue a run that was killed, interrupted or stopped by an error, from its latest
    checkpoint (see :mod:`clbench.engine.checkpoint`), in the same run directory.

    ``overrides`` may change ``train.*`` and ``engine.*`` values (e.g. a lower learning rate
    after a divergence); a changed training value marks the run non-comparable and restarts
    the unfinished task from its beginning (the last task boundary): the progress made within
    it belongs to the old values (weights on their way to a divergence, optimiser moments, the
    schedule) and would mix two settings in one task."""
    run_dir = Path(run_dir)
    record = load_record(run_dir)
    if record["status"] == "complete":
        Checkpointer(run_dir / CHECKPOINT_DIR).discard()  # left behind if the run was killed while removing it
        return record
    cfg = config_from_record(record, overrides)
    changed = [f"{k}={v}" for k, v in overrides if not (k.startswith("engine.") and k.split(".")[1] in RESULT_NEUTRAL_ENGINE)]
    dist = current_dist(resolve_device(cfg.engine.device))
    progress = _progress_for(progress, dist)
    data, stream, method = build(cfg, cache)
    check_training_steps(cfg, stream)
    protocol = record["protocol"]
    if stream.order.tolist() != protocol["class_order"] or data.split_id != protocol["split_id"]:
        raise DataError(f"The benchmark data differ from those the run in {run_dir} started with (class order or "
                        f"split '{protocol['split_id']}'). Resume with the same data, or start a new run.")
    if method.backbone.weights.to_dict() != protocol["weights"]:
        raise WeightsError(f"The backbone weights differ from those the run started with "
                           f"({protocol['weights']}). Resume with the same weights file, or start a new run.")
    checkpoints = Checkpointer(run_dir / CHECKPOINT_DIR, dist=dist)
    point = checkpoints.load()
    if point.fallback:
        progress.log(f"[yellow]warning:[/] {point.fallback}")
    if point.tasks_done > len(record["tasks"]):
        raise ConfigError(f"The checkpoint in {run_dir} is ahead of its record ({point.tasks_done} tasks vs "
                          f"{len(record['tasks'])}); the record was not written. Start a new run.")
    try:
        preset = find_preset(record["preset"], cfg.method, cfg.benchmark, cfg.to_dict()["benchmark"]) \
            if record.get("preset") else None
    except RegistryError:
        preset = None
        method.noncomparable.append(f"preset {record['preset']} is no longer defined for this setting")
    _flag_departures(method, cfg, preset, progress)
    for reason in record.get("noncomparable_reasons") or []:  # earlier resumes, earlier values
        if reason not in method.noncomparable:
            method.noncomparable.append(reason)
    if changed:
        method.noncomparable.append(f"resumed after task {point.tasks_done} with changed settings: {', '.join(changed)}")
    if point.step is not None and any(k.startswith("train.") for k, _ in overrides):
        point.step = None  # the unfinished task restarts with the new training values
        checkpoints.drop_step()
    recorder = RunRecorder.reopen(run_dir, record, point.tasks_done,
                                  {**point.describe(), "overrides": [[k, str(v)] for k, v in overrides],
                                   "world_size": dist.world_size, "hostname": socket.gethostname()},
                                  write=dist.is_main)
    recorder.record["config"] = cfg.to_dict()
    return _train(cfg, stream, method, recorder, dist, progress, on_task, point)


def task_values(record: dict[str, Any]) -> dict[str, float | None]:
    """What the loggers get after a task: accuracy on all seen classes, on the old classes (None
    after the first task) and on the new task's, on each task so far, and the task's times."""
    task = record["tasks"][-1]
    old, new = stability_plasticity([t["correct_per_class"] for t in record["tasks"]],
                                    record["test_counts"]["per_class"], record["protocol"]["task_ranges"])[-1]
    return {"acc_all": record["accuracy_curve"][-1], "acc_old": old, "acc_new": new,
            **{f"acc_T{j + 1}": a for j, a in enumerate(record["accuracy_matrix"][-1])},
            "train_s": task["train_s"], "eval_s": task["eval_s"]}


def _flag_departures(method: Any, cfg: RunConfig, preset: Any, progress: ProgressReporter) -> None:
    """Name every departure from the preset's published setting on the method's
    non-comparable reasons (they reach the record) and warn about them now."""
    method.noncomparable.extend(r for r in comparability.departures(cfg, preset) if r not in method.noncomparable)
    if method.noncomparable:
        progress.log(f"[yellow]warning:[/] {comparability.warning(cfg, preset, method.noncomparable)}")


def _train(cfg: RunConfig, stream: Any, method: Any, recorder: RunRecorder, dist: SingleProcess,
           progress: ProgressReporter, on_task: Callable[[dict], None] | None,
           point: ResumePoint | None) -> dict[str, Any]:
    """Train through the stream, recording each task and checkpointing; the final record."""
    run_dir = recorder.run_dir
    checkpoint = Checkpointer(run_dir / CHECKPOINT_DIR, cfg.engine.checkpoint_every, dist)
    hparams = {"run": {"method": cfg.method, "benchmark": cfg.benchmark, "seed": cfg.seed, "preset": cfg.preset},
               **cfg.to_dict()}
    loggers = build_loggers(cfg.engine.loggers, run_dir, hparams, run_dir.name,
                            sum(t["steps"] for t in recorder.record["tasks"])) if dist.is_main else None

    def task_end(task: Any, result: dict[str, Any]) -> None:
        state = method.task_state()
        entry = {
            "index": task.index, "classes": list(task.classes), "lo": task.lo, "hi": task.hi,
            "n_train": len(stream.train_data(task.index, cumulative=method.cumulative_data)),
            **result,
            "method_log": jsonable(method.task_log()),
            "state": save_state(run_dir, task.index, state, cfg.engine.save_task_state) if dist.is_main else None,
        }
        recorder.record["comparable"] = not method.noncomparable
        recorder.record["noncomparable_reasons"] = list(method.noncomparable)
        recorder.add_task(entry)
        a_t = recorder.record["accuracy_curve"][-1]
        progress.log(f"  {cfg.method} seed {cfg.seed} · task {task.index + 1}/{stream.n_tasks}: "
                     f"A_t {a_t:.2f}% · train {result['train_s']:.1f}s · eval {result['eval_s']:.1f}s")
        if loggers is not None:
            loggers.task_done(task.index, task_values(recorder.record))
        if on_task is not None and dist.is_main:
            on_task(recorder.record)

    trainer = Trainer(method, stream, cfg, progress=progress, dist=dist, on_task_end=task_end, checkpoint=checkpoint)
    trainer.loop.loggers = loggers
    hint = f"continue it with: clbench run --resume {run_dir}"
    try:
        trainer.fit(point)
    except KeyboardInterrupt as exc:
        recorder.finish("interrupted", f"interrupted ({exc or 'by the user'}); {hint}")
        raise KeyboardInterrupt(f"The run stopped; finished tasks and a checkpoint are kept; {hint}") from None
    except TrainingDiverged as exc:
        message = f"{exc} To continue from the last checkpoint with other settings: clbench run --resume {run_dir} --set train.lr=..."
        recorder.finish("failed", message)
        raise TrainingDiverged(message) from None
    except OutputError as exc:  # a full disk or an I/O error: every file written before is intact
        message = f"{exc} The run stopped; once the disk has room, continue it with: clbench run --resume {run_dir}"
        recorder.finish("failed", message)
        raise OutputError(message) from None
    except BaseException as exc:
        recorder.finish("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if loggers is not None:
            loggers.close(recorder.record["metrics"] if len(recorder.record["tasks"]) == stream.n_tasks else None)
    recorder.record["efficiency"] = jsonable(stream_efficiency(method, trainer.test_image(stream.tasks[-1]),
                                                               recorder.record["tasks"]))
    record = recorder.finish("complete")
    checkpoint.discard()
    return record
