"""Typed configuration: sections, options, defaults, presets and ``--set`` overrides.

A run's configuration has five sections, each a dataclass:

``engine``    where and how to run (device, precision, workers, output directory);
``train``     the optimisation loop the trainer owns (epochs, optimiser, schedule, masking);
``backbone``  which timm model and weights;
``benchmark`` the benchmark's own options (data root, number of tasks, class order);
``method``    the method's own options.

Each field is declared with :func:`option`: its default, a one-line help and, for numbers,
its valid range (checked by :func:`check_options` when a run is resolved; listed by
:func:`describe_options`). A subclass that only changes a field's default inherits its help
and range. Values are resolved in this order, later winning (:mod:`clbench.resolve`):
dataclass defaults, the benchmark's defaults, the method's defaults, the chosen preset, a
``--config`` file, ``--set`` overrides. Unknown keys, values of the wrong type and values out
of range raise :class:`~clbench.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass, field
from typing import Any, Literal

from .errors import ConfigError, closest

SECTIONS = ("engine", "train", "backbone", "benchmark", "method")
# Larger learning rates overflow float32 updates (a RuntimeError inside the optimiser), and
# no real run uses one.
MAX_LR = 1_000_000


# Engine keys that cannot change a run's numbers: a resume may change them without marking the
# run non-comparable, and a sweep's run key ignores them. The device is not among them: it
# decides the autocast precision ('auto').
RESULT_NEUTRAL_ENGINE = frozenset({"num_workers", "output_dir", "progress", "save_task_state", "checkpoint_every",
                                   "loggers"})


# ---------------------------------------------------------------------------- options
_OPTION = "clbench_option"  # the field-metadata key of option()


@dataclass(frozen=True)
class Bounds:
    """The valid range of a number (each element of a tuple); a bounded float must be finite."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __bool__(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return True  # None, 'auto', strings: not numbers, not bounded
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def __str__(self) -> str:
        low = f"[{self.ge}" if self.ge is not None else f"({self.gt}" if self.gt is not None else ""
        high = f"{self.le}]" if self.le is not None else f"{self.lt})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        ops = [(">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt)]
        return next((f"{op} {bound}" for op, bound in ops if bound is not None), "any value")

    def example(self, integer: bool) -> float:
        """A value inside the range, for error messages."""
        if self.ge is not None:
            value = self.ge
        elif self.gt is not None:
            value = (self.gt + self.lt) / 2 if self.lt is not None and not integer else self.gt + 1
        else:
            value = self.le if self.le is not None else self.lt - 1 if self.lt is not None else 0
        return int(value) if integer else float(value)


@dataclass(frozen=True)
class Option:
    """What :func:`describe_options` tells about one config field."""

    name: str
    type: str  # e.g. 'float', 'int | None', "'sgd' | 'adam'"
    default: Any
    help: str
    bounds: Bounds

    @property
    def range(self) -> str:
        return str(self.bounds) if self.bounds else ""


def option(default: Any = MISSING, help: str = "", *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None, default_factory: Any = MISSING) -> Any:
    """A config dataclass field with a one-line ``help`` and, for numbers, a valid range
    (``ge``/``gt``/``le``/``lt``; for tuples, each element's), e.g.
    ``lr: float = option(0.01, "learning rate", gt=0)``."""
    metadata = {_OPTION: (help, Bounds(ge, gt, le, lt))}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def _declared(cls: type, name: str) -> tuple[str, Bounds]:
    """The help and bounds of field ``name``: its own option(), or that of the nearest base
    class that declares one (a subclass changing only the default keeps them)."""
    for klass in cls.__mro__:
        declared = getattr(klass, "__dataclass_fields__", {}).get(name)
        if declared is not None and _OPTION in declared.metadata:
            return declared.metadata[_OPTION]
    return "", Bounds()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def _type_label(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_label(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        inner = f"{_type_label(args[0])}, ..." if len(args) == 2 and args[1] is Ellipsis else \
            ", ".join(_type_label(a) for a in args)
        return f"tuple[{inner}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def describe_options(cls: type) -> list[Option]:
    """Name, type, default, help and range of every field of config class ``cls``."""
    types_ = field_types(cls)
    return [Option(f.name, _type_label(types_[f.name]), _default(f), *_declared(cls, f.name))
            for f in dataclasses.fields(cls)]


def check_options(obj: Any, prefix: str) -> None:
    """Raise :class:`ConfigError` for the first value of dataclass ``obj`` outside its
    option's range, naming the key (``<prefix>.<name>``), the value, the range and a fix."""
    for f in dataclasses.fields(obj):
        _, bounds = _declared(type(obj), f.name)
        value = getattr(obj, f.name)
        values = value if isinstance(value, tuple) else (value,)
        if not bounds or all(bounds.admits(v) for v in values):
            continue
        key = f"{prefix}.{f.name}"
        default = _default(f)
        defaults = default if isinstance(default, tuple) else (default,)
        integer = all(isinstance(v, int) for v in values)
        fix = ",".join(str(v) for v in defaults) if default not in (None, (), MISSING) and \
            all(bounds.admits(v) for v in defaults) else str(bounds.example(integer))
        what = f"have every value {bounds}" if isinstance(value, tuple) else f"be {bounds}"
        raise ConfigError(f"Config key '{key}' must {what}, got {value!r}. Fix it, e.g. --set {key}={fix}.")


@dataclass
class EngineConfig:
    """Where and how a run executes; never changes results except through precision."""

    device: str = option("auto", "where to run: auto, cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = option("auto", "autocast precision; auto: bf16 on CUDA, else fp32")
    num_workers: int | Literal["auto"] = option("auto", "data-loader worker processes; auto suits the machine", ge=0)
    deterministic: bool = option(True, "deterministic kernels where PyTorch offers them")
    output_dir: str = option("results", "where run directories go")
    progress: bool = option(True, "progress: bars on a terminal, one line per epoch otherwise")
    loggers: tuple[Literal["csv", "tensorboard", "wandb"], ...] = option(
        (), "experiment loggers, any of csv, tensorboard, wandb (W&B offline unless configured)")
    save_task_state: Literal["auto", "always", "never"] = option(
        "auto", "save per-task adapters/heads (landscapes and audits need them); auto: states up to 64 MB")
    checkpoint_every: int = option(0, "also checkpoint every N training steps within a task (0: off)", ge=0)
    compile: bool = option(False, "torch.compile the backbone forward (for GPU runs; results within float tolerance)")


@dataclass
class TrainConfig:
    """The optimisation loop; the engine applies it identically to every method."""

    epochs: int = option(5, "training epochs per task", ge=1)
    batch_size: int = option(64, "global batch size (divided over ranks under DDP)", ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = option("sgd", "optimiser")
    lr: float = option(0.01, "learning rate", gt=0, le=MAX_LR)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    betas: tuple[float, float] = option((0.9, 0.999), "Adam/AdamW betas", ge=0, lt=1)
    weight_decay: float = option(0.0, "weight decay", ge=0, le=MAX_LR)
    schedule: Literal["constant", "cosine", "multistep", "coda-cosine"] = option(
        "constant", "learning-rate schedule, stepped per epoch")
    # coda-cosine: CODA-Prompt's lr·cos(99π·e / (200·(E−1))) (ends near 0.016·lr, not 0)
    milestones: tuple[int, ...] = option((), "multistep: epochs at which lr *= gamma", ge=0)
    gamma: float = option(0.1, "multistep: factor applied to lr at each milestone", gt=0)
    first_task_epochs: int | None = option(None, "epochs of the first task (PyCIL 'init_epoch'); None: epochs", ge=1)
    first_task_lr: float | None = option(None, "learning rate of the first task (PyCIL 'init_lr'); None: lr", gt=0, le=MAX_LR)
    first_task_milestones: tuple[int, ...] | None = option(
        None, "multistep milestones of the first task; None: milestones", ge=0)
    grad_clip: float | None = option(None, "max global gradient norm; None disables clipping", gt=0)
    logit_mask: Literal["seen", "current", "none"] = option("seen", "which logits the cross-entropy covers")
    # seen: CE over all classes seen so far; current: CE over the current task's classes
    # only (old and future logits masked); none: CE over every logit the method returns.
    eval_batch_size: int = option(256, "evaluation batch size", ge=1)
    drop_last: bool = option(False, "drop the last incomplete training batch of each epoch")


@dataclass
class BackboneConfig:
    """The pretrained model: a full timm ``arch.tag`` (or a clbench-registered name)."""

    name: str = option("vit_base_patch16_224.augreg2_in21k_ft_in1k", "timm arch.tag or a clbench-registered backbone")
    weights: str = option("auto", "auto | none | hub | /path/to/file(.safetensors|.pth|.npz)")
    weights_sha256: str | None = option(None, "when set, the weights file must have this hash")
    input_norm: Literal["none", "timm"] = option("none", "input normalisation; none: [0,1] inputs as the references do")
    drop_path: float = option(0.0, "stochastic depth rate", ge=0, lt=1)
    img_size: int | None = option(
        None, "input size in pixels the model is built for (position embeddings resized); None: the benchmark's", ge=1)


@dataclass
class BenchmarkConfig:
    """Options every benchmark has; benchmarks subclass this to add their own."""

    n_tasks: int = option(10, "number of tasks", ge=1)
    init_cls: int | None = option(None, "classes in the first task; None: same as the others", ge=1)
    class_order: Literal["seeded", "natural"] = option(
        "seeded", "seeded: RandomState(order seed).permutation; natural: as the benchmark lists them")
    order_seed: int | None = option(None, "seed of the class order; None: the run seed", ge=0, lt=2**32)


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
