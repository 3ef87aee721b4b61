"""Typed configuration: sections, defaults, presets and ``--set`` overrides.

A run's configuration has five sections, each a dataclass:

``engine``    where and how to run (device, precision, workers, output directory);
``train``     the optimisation loop the trainer owns (epochs, optimiser, schedule, masking);
``backbone``  which timm model and weights;
``benchmark`` the benchmark's own options (data root, number of tasks, class order);
``method``    the method's own options.

Values are resolved in this order, later winning: dataclass defaults, the benchmark's
defaults, the method's defaults, the chosen preset, a ``--config`` file, ``--set`` overrides.
Unknown keys and values of the wrong type raise :class:`~clbench.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError, closest

SECTIONS = ("engine", "train", "backbone", "benchmark", "method")


# Engine keys that cannot change a run's numbers: a resume may change them without marking the
# run non-comparable, and a sweep's run key ignores them. The device is not among them: it
# decides the autocast precision ('auto').
RESULT_NEUTRAL_ENGINE = frozenset({"num_workers", "output_dir", "progress", "save_task_state", "checkpoint_every"})


@dataclass
class EngineConfig:
    """Where and how a run executes; never changes results except through precision."""

    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, else fp32
    num_workers: int | Literal["auto"] = "auto"  # data-loader workers; auto suits the machine
    deterministic: bool = True  # deterministic kernels where PyTorch offers them
    output_dir: str = "results"
    progress: bool = True  # rich progress bars (off automatically when not a terminal)
    save_task_state: Literal["auto", "always", "never"] = "auto"  # per-task adapters/heads;
    # auto: saved when a task's state is at most 64 MB (landscapes and audits need them)
    checkpoint_every: int = 0  # also checkpoint every N training steps within a task (0: off)
    compile: bool = False  # torch.compile the backbone's forward (for GPU runs; results within float tolerance)


@dataclass
class TrainConfig:
    """The optimisation loop; the engine applies it identically to every method."""

    epochs: int = 5
    batch_size: int = 64  # global batch size (divided over ranks under DDP)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW only
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = "constant"  # stepped per epoch
    # coda-cosine: CODA-Prompt's lr·cos(99π·e / (200·(E−1))) (ends near 0.016·lr, not 0)
    milestones: tuple[int, ...] = ()  # multistep: epochs at which lr *= gamma
    gamma: float = 0.1
    first_task_epochs: int | None = None  # overrides for the first task (PyCIL 'init_*')
    first_task_lr: float | None = None
    first_task_milestones: tuple[int, ...] | None = None
    grad_clip: float | None = None  # max global gradient norm; None disables clipping
    logit_mask: Literal["seen", "current", "none"] = "seen"
    # seen: CE over all classes seen so far; current: CE over the current task's classes
    # only (old and future logits masked); none: CE over every logit the method returns.
    eval_batch_size: int = 256
    drop_last: bool = False


@dataclass
class BackboneConfig:
    """The pretrained model: a full timm ``arch.tag`` (or a clbench-registered name)."""

    name: str = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    weights: str = "auto"  # auto | none | hub | /path/to/file(.safetensors|.pth|.npz)
    weights_sha256: str | None = None  # when set, the weights file must have this hash
    input_norm: Literal["none", "timm"] = "none"  # none: [0,1] inputs as the references do
    drop_path: float = 0.0


@dataclass
class BenchmarkConfig:
    """Options every benchmark has; benchmarks subclass this to add their own."""

    n_tasks: int = 10
    init_cls: int | None = None  # classes in the first task; None: same as the others
    class_order: Literal["seeded", "natural"] = "seeded"  # seeded: RandomState(seed).permutation
    order_seed: int | None = None  # seed of the class order; None: the run seed


@dataclass
class MethodConfig:
    """Options every method has; methods subclass this to add their own."""


@dataclass
class RunConfig:
    """The fully resolved configuration of one run (one method, one benchmark, one seed)."""

    method: str
    benchmark: str
    seed: int
    preset: str | None
    engine: EngineConfig = field(default_factory=EngineConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    benchmark_cfg: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    method_cfg: MethodConfig = field(default_factory=MethodConfig)

    def section(self, name: str) -> Any:
        return {"engine": self.engine, "train": self.train, "backbone": self.backbone,
                "benchmark": self.benchmark_cfg, "method": self.method_cfg}[name]

    def to_dict(self) -> dict[str, Any]:
        """The five resolved sections as a JSON-ready dict (stored in the run record)."""
        return {name: to_plain(self.section(name)) for name in SECTIONS}


def to_plain(obj: Any) -> Any:
    """Dataclass/tuple tree → JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------- coercion

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a comma-separated list"
    if tp is type(None):
        return "none"
    return f"a{'n' if tp is int else ''} {getattr(tp, '__name__', tp)}"


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a Python value or a command-line string) to type ``tp``.

    Raises :class:`ConfigError` naming ``key``, the expected type and the value.
    """
    try:
        return _coerce(value, tp)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Config key '{key}' expects {_type_name(tp)}, got {value!r}. "
            f"Fix the value, e.g. --set {key}=<{_type_name(tp)}>."
        ) from None


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.strip().lower() in _NONE)):
            return None
        for arg in args:  # first matching alternative wins (order: as declared)
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError):
                continue
        raise ValueError(value)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        raise ValueError(value)
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            text = value.strip().strip("[]()")
            value = [v for v in (p.strip() for p in text.split(",")) if v]
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise ValueError(value)
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(value)
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            return int(value.strip())
        raise TypeError(value)
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return float(value.strip())
        raise TypeError(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise TypeError(value)
    raise TypeError(f"unsupported config type {tp}")


def field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a config dataclass's fields."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def apply_values(obj: Any, values: dict[str, Any], prefix: str) -> Any:
    """Return a copy of dataclass ``obj`` with ``values`` applied (validated and coerced)."""
    types_ = field_types(type(obj))
    changes = {}
    for key, value in values.items():
        if key not in types_:
            raise ConfigError(
                f"Unknown config key '{prefix}.{key}'.{closest(key, types_)} "
                f"Valid keys in '{prefix}': {', '.join(types_)}."
            )
        changes[key] = coerce(value, types_[key], f"{prefix}.{key}")
    return dataclasses.replace(obj, **changes)


def parse_set(items: list[str] | None, flag: str = "--set") -> list[tuple[str, str]]:
    """Parse ``key=value`` items of a command-line flag (``--set``, ``--grid``, ...) into
    (key, raw value) pairs."""
    pairs = []
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or key.startswith(".") or key.endswith("."):
            raise ConfigError(
                f"Malformed override '{item}'. Write {flag} key=value, "
                f"for example --set train.lr=0.01, --set sdlora.rank=8 or --grid train.lr=0.01,0.03."
            )
        pairs.append((key, value))
    return pairs


def flatten(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dict (e.g. from a YAML config file) → dotted (key, value) pairs."""
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, dotted + "."))
        else:
            out.append((dotted, value))
    return out
