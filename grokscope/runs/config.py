"""Frozen run configuration: model and training configs around a task's own config, JSON round trip.

Every config is a frozen dataclass validated in ``__post_init__`` (no side effects);
derived values are properties; ``to_dict``/``from_dict`` give a JSON round trip that
carries :data:`SCHEMA_VERSION`. A run directory stores one :class:`RunConfig`.

Example:
    >>> from grokscope.runs.config import ModelConfig, RunConfig
    >>> cfg = RunConfig(model=ModelConfig(n_layers=2))
    >>> RunConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from typing import Any

from grokscope.errors import ConfigError, closest, unknown_key_message
from grokscope.tasks.base import default_task_config, task_config_class, task_config_classes

SCHEMA_VERSION = 1
"""Version of the JSON layout of configs and run directories; bump on breaking change."""

TaskConfig = Any
"""A registered task's frozen config (a dataclass with ``task`` and ``seed`` fields; the
class is the task's own, declared in its file as ``Task.config_cls``)."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_fraction(name: str, value: float) -> None:
    _check(0 < value < 1, f"{name} must be in (0, 1), got {value!r}")


def task_config_from_dict(d: dict[str, Any]) -> TaskConfig:
    """Rebuild a task config from its dict (the ``task`` key picks the registered class)."""
    return _from_dict(task_config_class(d.get("task")), d)



# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelConfig:
    """Transformer shape. The vocabulary size and context come from the dataset.

    Attributes:
        n_layers: number of blocks (hook points ``blocks.{l}.*`` for each).
        d_model, n_heads, d_mlp: widths; ``d_head = d_model // n_heads``.
        act_fn: MLP activation (``gelu_new`` as GPT-2).
        normalization_type: ``LN`` (pre-LN, as GPT-2), ``LNPre``, ``RMS`` or None.
        positional_embedding_type: ``standard`` (learned absolute) or ``rotary``.
        share_layers: cross-layer sharing (paper, Appendix E.2): block ``l`` and block
            ``l + n_layers // 2`` share every parameter; hook points stay distinct.
        tie_embeddings: tie the unembedding to the embedding (GPT-2 does).
        init_range: std of the normal init (GPT-2: 0.02). Larger values (0.6-1.0) start
            the model in a memorising regime; with weight decay it groks later
            (docs/REPRODUCTION.md, "A larger initialisation scale").
        dropout: GPT-2's dropout probability while training (the paper: 0.1), applied by
            hooks at the embedding, the attention pattern and both residual writes
            (:func:`grokscope.runs.model.dropout`); evaluation and analysis never use it.
    """

    n_layers: int = 8
    d_model: int = 768
    n_heads: int = 12
    d_mlp: int = 3072
    act_fn: str = "gelu_new"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    share_layers: bool = False
    tie_embeddings: bool = False
    init_range: float = 0.02
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check(self.n_layers >= 1, f"n_layers must be >= 1, got {self.n_layers}")
        _check(self.d_model >= 1 and self.n_heads >= 1, "d_model and n_heads must be >= 1")
        _check(
            self.d_model % self.n_heads == 0,
            f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})",
        )
        _check(self.d_mlp >= 1, f"d_mlp must be >= 1, got {self.d_mlp}")
        _check(
            self.act_fn in ("gelu", "gelu_new", "relu", "silu"),
            f"act_fn must be one of gelu, gelu_new, relu, silu; got {self.act_fn!r}",
        )
        _check(
            self.normalization_type in ("LN", "LNPre", "RMS", "RMSPre", None),
            f"normalization_type must be LN, LNPre, RMS, RMSPre or None; got {self.normalization_type!r}",
        )
        _check(
            self.positional_embedding_type in ("standard", "rotary"),
            f"positional_embedding_type must be 'standard' or 'rotary', got {self.positional_embedding_type!r}",
        )
        _check(
            not self.share_layers or self.n_layers % 2 == 0,
            f"share_layers needs an even n_layers, got {self.n_layers}",
        )
        _check(self.init_range > 0, f"init_range must be > 0, got {self.init_range}")
        _check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_unique_blocks(self) -> int:
        return self.n_layers // 2 if self.share_layers else self.n_layers


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation, checkpoint schedule and stop conditions.

    Attributes:
        lr, betas, weight_decay: AdamW; weight decay on every weight matrix (embeddings
            included), none on biases and normalization weights, as the paper.
        warmup_steps: linear warmup, then constant lr (the paper).
        lr_decay: ``None`` (constant after warmup, the paper) or ``"cosine"``: after warmup,
            lr follows a half cosine from ``lr`` down to ``lr * lr_min_ratio`` at
            ``max_steps`` (a run stopped early by ``max_time_s`` resumes on the same curve).
        lr_min_ratio: the final lr of the cosine as a fraction of ``lr``.
        batch_size: examples per step.
        grad_clip: max global grad norm (0 disables).
        atomic_fraction: share of each batch drawn from atomic facts; None = natural mix.
        max_steps: hard stop.
        max_time_s: wall-time stop (None = no limit).
        eval_every: evaluate every probe split every N steps.
        eval_size: cap on examples per probe split per evaluation (None = all).
        dense_every, dense_until: checkpoint every ``dense_every`` steps up to ``dense_until``.
        log_per_decade: then ~this many log-spaced checkpoints per decade of steps.
        stop_iid_threshold, stop_patience: stop ``stop_patience`` evaluations after
            test_inferred_iid accuracy first reaches the threshold (None disables).
        device: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
        autocast: ``auto`` (bf16 on CUDA when supported, else fp16), ``bf16``, ``fp16``, ``off``.
            Ignored on CPU.
        threads: torch intra-op threads on CPU (None: OMP_NUM_THREADS, else 1).
        grad_filter: ``None`` (the paper's recipe) or ``"ema"``: Grokfast's filter (Lee et
            al. 2024), ``g <- g + lambda * ema(g)``, ``ema <- alpha * ema + (1 - alpha) * g``
            (from the first gradient it sees), before clipping; its state is saved with
            the optimizer's, so resume stays exact.
        grad_filter_alpha, grad_filter_lambda: Grokfast's alpha (0.98) and lambda (2).
        grad_filter_start: the first step the filter sees (0: from the start); before it
            training is the plain recipe's, step for step.
    """

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.1
    warmup_steps: int = 2000
    lr_decay: str | None = None
    lr_min_ratio: float = 0.0
    batch_size: int = 512
    grad_clip: float = 1.0
    atomic_fraction: float | None = None
    max_steps: int = 1_500_000
    max_time_s: float | None = None
    eval_every: int = 2000
    eval_size: int | None = 1000
    dense_every: int = 2000
    dense_until: int = 40_000
    log_per_decade: int = 5
    stop_iid_threshold: float | None = None
    stop_patience: int = 0
    device: str = "auto"
    autocast: str = "auto"
    threads: int | None = None
    grad_filter: str | None = None
    grad_filter_alpha: float = 0.98
    grad_filter_lambda: float = 2.0
    grad_filter_start: int = 0

    def __post_init__(self) -> None:
        _check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _check(self.lr_decay in (None, "cosine"), f"lr_decay must be None or 'cosine', got {self.lr_decay!r}")
        _check(0 <= self.lr_min_ratio <= 1, f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.grad_clip >= 0, f"grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if self.atomic_fraction is not None:
            _check_fraction("atomic_fraction", self.atomic_fraction)
        _check(self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}")
        _check(self.max_time_s is None or self.max_time_s > 0, "max_time_s must be > 0 or None")
        _check(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        _check(self.eval_size is None or self.eval_size >= 1, "eval_size must be >= 1 or None")
        _check(self.dense_every >= 1, f"dense_every must be >= 1, got {self.dense_every}")
        _check(self.dense_until >= 0, f"dense_until must be >= 0, got {self.dense_until}")
        _check(self.log_per_decade >= 0, f"log_per_decade must be >= 0, got {self.log_per_decade}")
        if self.stop_iid_threshold is not None:
            _check(0 < self.stop_iid_threshold <= 1, "stop_iid_threshold must be in (0, 1]")
        _check(self.stop_patience >= 0, f"stop_patience must be >= 0, got {self.stop_patience}")
        _check(
            self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
            f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}",
        )
        _check(self.autocast in ("auto", "bf16", "fp16", "off"), f"autocast must be auto, bf16, fp16 or off; got {self.autocast!r}")
        _check(self.threads is None or self.threads >= 1, f"threads must be >= 1 or None, got {self.threads}")
        _check(self.grad_filter in (None, "ema"), f"grad_filter must be None or 'ema', got {self.grad_filter!r}")
        _check(0 <= self.grad_filter_alpha < 1, f"grad_filter_alpha must be in [0, 1), got {self.grad_filter_alpha}")
        _check(self.grad_filter_lambda >= 0, f"grad_filter_lambda must be >= 0, got {self.grad_filter_lambda}")
        _check(self.grad_filter_start >= 0, f"grad_filter_start must be >= 0, got {self.grad_filter_start}")


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run: task (data), model, training, and the run seed.

    The run seed drives model init and batch order; the task's own ``seed`` drives data.
    """

    task: TaskConfig = field(default_factory=default_task_config)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    name: str = "run"

    def __post_init__(self) -> None:
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        _check(isinstance(self.task, task_config_classes()), f"task must be a registered task's config, got {type(self.task).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, **_to_dict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        d = dict(d)
        version = d.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"run config has schema_version {version!r}, this grokscope reads {SCHEMA_VERSION}; "
                "upgrade grokscope or re-create the run"
            )
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(unknown_key_message("run config", unknown, [f.name for f in fields(cls)]))
        return cls(
            task=task_config_from_dict(d["task"]) if "task" in d else default_task_config(),
            model=_from_dict(ModelConfig, d.get("model", {})),
            train=_from_dict(TrainConfig, d.get("train", {})),
            seed=d.get("seed", 0),
            name=d.get("name", "run"),
        )

    def override(self, overrides: dict[str, Any]) -> RunConfig:
        """Return a copy with dotted-key overrides applied, e.g. ``{"train.lr": 1e-3}``.

        Keys: ``seed``, ``name``, ``task.<field>``, ``model.<field>``, ``train.<field>``.
        Values given as strings are parsed to the field's type.
        """
        top: dict[str, Any] = {}
        sections: dict[str, dict[str, Any]] = {"task": {}, "model": {}, "train": {}}
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if not name:
                if section not in ("seed", "name"):
                    raise ValueError(f"unknown override {key!r}; use task.X, model.X, train.X, seed or name")
                top[section] = _parse(type(getattr(self, section)), value)
                continue
            if section not in sections:
                raise ValueError(f"unknown override section in {key!r}; use task., model. or train.")
            sub = getattr(self, section)
            names = {f.name: f for f in fields(sub)}
            if name not in names or name == "task":
                allowed = ", ".join(n for n in names if n != "task")
                hint = closest(name, [n for n in names if n != "task"])
                raise ConfigError(f"unknown override {key!r}{f' (did you mean {section}.{hint}?)' if hint else ''}; "
                                  f"{section} fields are: {allowed}")
            sections[section][name] = _parse_like(getattr(sub, name), names[name], value)
        # One replace per section, so settings that depend on each other change together.
        changed = {sec: replace(getattr(self, sec), **kw) for sec, kw in sections.items() if kw}
        return replace(self, **changed, **top)


# --------------------------------------------------------------------------- helpers


def _to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_dict(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_to_dict(x) for x in obj]
    return obj


def _from_dict(cls: type, d: dict[str, Any]) -> Any:
    names = {f.name: f for f in fields(cls)}
    unknown = set(d) - set(names)
    if unknown:
        raise ConfigError(unknown_key_message(cls.__name__, unknown, names))
    kwargs = {}
    for k, v in d.items():
        default = names[k].default
        kwargs[k] = tuple(v) if isinstance(v, list) or isinstance(default, tuple) and v is not None else v
    return cls(**kwargs)


def _parse_like(current: Any, f: dataclasses.Field, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    v = value.strip()
    if v.lower() in ("none", "null"):
        return None
    if isinstance(current, bool) or f.type in ("bool",):
        if v.lower() in ("true", "1", "yes"):
            return True
        if v.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{f.name} expects true/false, got {value!r}")
    if isinstance(current, tuple):
        return tuple(float(x) for x in v.strip("()[]").split(","))
    type_str = str(f.type)
    try:
        if isinstance(current, int) or (current is None and "int" in type_str and "float" not in type_str):
            return int(v)
        if isinstance(current, float) or (current is None and "float" in type_str):
            return float(v)
    except ValueError as e:
        raise ValueError(f"{f.name} expects a number, got {value!r}") from e
    return v


def _parse(kind: type, value: Any) -> Any:
    if isinstance(value, str) and kind is int:
        return int(value)
    return value
