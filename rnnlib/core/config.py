"""Experiment configs: YAML -> one validated, frozen `ExperimentConfig`, or a `ConfigError` naming what is wrong.

An experiment YAML looks like::

    name: adding_cells
    task: {name: adding, length: 100}
    model: {kind: recurrent, cell_type: lstm, units: 64, num_layers: 1, dropout: 0.0}
    training:
      epochs: 10
      steps_per_epoch: 50
      batch_size: 32
      optimizer: adam
      learning_rate: 0.001
      clipnorm: 1.0           # clip the global gradient norm; null for no clipping
      truncation: full        # full | k | {k1: 5, k2: 10} | {mode: random_length | unbiased, mean: 20}
    seed: 0
    grid:                     # optional sweep: the cartesian product of these values
      model.cell_type: [rnn, lstm, gru]
      seed: [0, 1, 2]

Only this module turns untrusted input into configs; everything downstream takes a valid config.
"""

import copy
import dataclasses
import itertools
import math
import reprlib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml

from rnnlib import tasks
from rnnlib.core import cells
from rnnlib.core.errors import ConfigError
from rnnlib.tasks.base import refuse_boolean_number

AR_KINDS = ("ar", "ar_mlp")  # model kinds without state: a fixed look-back of `ar_order` steps
OPTIMIZERS = ("adam", "rmsprop", "sgd")
TRUNCATION_MODES = ("full", "tbptt", "random_length", "unbiased")
MAX_GRID_POINTS = 10_000
# `training.probe_every: auto` probes at epoch ends at least this many batches apart (and after the last epoch):
# at 64 units and T = 100-200 a probe costs 16-57% of 50 updates of batch 64 and up to 96% at batch 32
# (benchmarks/throughput.py), so one per 500 batches stays under 10% of training time for every cell.
AUTO_PROBE_SPACING = 500

# The version of the config schema this code writes. Every logged `config.yaml` carries it as `schema_version`
# (and every run as the tag `rnnlib.schema_version`); text without one was written at version 1. Reading brings
# older versions up to this one through `MIGRATIONS`.
SCHEMA_VERSION = 4
SCHEMA_KEY = "schema_version"

# What a YAML file may hold before it is refused unread (an alias bomb expands 453 bytes into billions of values).
MAX_YAML_BYTES = 1_000_000
MAX_YAML_VALUES = 20_000  # scalars, lists and mappings, with aliases expanded
MAX_YAML_DEPTH = 20


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @pydantic.field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info):
        return refuse_boolean_number(cls, value, info)


class ModelConfig(_Frozen):
    """The network: a model family (`kind`) and its size.

    `kind: recurrent` (the default) stacks `num_layers` layers of `units` cells of `cell_type`, a cell of the
    registry `rnnlib.core.cells.CELLS`. `dropout` is applied between stacked layers (never on the recurrent
    connection, which would rule out cuDNN). `recurrent_gain` scales the orthogonal initial recurrent weights
    (Keras' default, gain 1): above 1 a tanh RNN starts with a spectral radius above 1, the setting where
    gradients explode (Pascanu et al. 2013).

    `kind: ar` and `kind: ar_mlp` are the AR(τ) baselines (d2l.ai "Sequence models"), which predict from the last
    τ = `ar_order` inputs only and keep no state: `ar`, linear in them, or `ar_mlp`, a multilayer perceptron with
    `num_layers` hidden layers of `units` ReLU units. Comparing them with the recurrent cells on one series asks
    whether a latent state beats a fixed look-back. They have no cell: `cell_type` is none for them (a grid over
    `model.kind` and `model.cell_type` runs each AR point once).
    """

    kind: Literal["recurrent", "ar", "ar_mlp"] = "recurrent"
    cell_type: str | None = "lstm"
    units: int = pydantic.Field(64, ge=1, le=4096)
    num_layers: int = pydantic.Field(1, ge=1, le=16)
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)
    recurrent_gain: float = pydantic.Field(1.0, gt=0.0, le=10.0)
    ar_order: int = pydantic.Field(8, ge=1, le=10_000)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _no_cell_without_recurrence(cls, value):
        if isinstance(value, Mapping) and value.get("kind") in AR_KINDS:
            return {**value, "cell_type": None}
        return value

    @pydantic.field_validator("cell_type")
    @classmethod
    def _registered_cell(cls, value):
        if value is not None and value not in cells.CELLS:
            hint = " (an AR(τ) baseline is model.kind: ar or ar_mlp)" if value in AR_KINDS else ""
            raise ValueError(f"unknown cell; expected one of: {', '.join(cells.CELLS)}{hint}")
        return value

    @pydantic.model_validator(mode="after")
    def _recurrent_needs_a_cell(self):
        if self.kind == "recurrent" and self.cell_type is None:
            raise ValueError(f"model.cell_type: a recurrent model needs a cell; expected one of: "
                             f"{', '.join(cells.CELLS)}")
        return self

    @pydantic.model_serializer(mode="wrap")
    def _without_a_cell(self, handler):
        data = handler(self)
        if self.cell_type is None:  # an AR model: written without a cell, so a grid point may add one
            data.pop("cell_type", None)
        return data

    @property
    def label(self) -> str:
        """What the model is, in one word: its cell for a recurrent model (rnn, lstm, gru), else its kind
        (ar, ar_mlp). Logged as the param `model.label`; the Compare page groups by it."""
        return self.cell_type if self.kind == "recurrent" and self.cell_type else self.kind


class Truncation(_Frozen):
    """How far back gradients flow.

    - `full`: backpropagation through the whole sequence.
    - `tbptt`: every k1 steps, backpropagate k2 steps (k1 <= k2; Williams & Peng 1990, Sutskever 2013). The
      hidden state is carried across chunks, so memory is bounded by k2, not the sequence length.
    - `random_length`: random-length TBPTT. Each batch is cut into consecutive chunks of geometric length with
      mean `mean`, k1 = k2 = the chunk length, and each update takes the mean loss of its chunk. This is *not*
      the unbiased estimator of Tallec & Ollivier (2017) / d2l.ai section 9.7, which reweights the gradient by
      the truncation probabilities: with plain chunks the expected update is biased towards short-range
      dependencies, like fixed TBPTT, and the per-chunk mean weighs the steps of short chunks more. Written
      `randomized` before schema version 2.
    - `unbiased`: the same geometric chunks with Tallec & Ollivier's (2017) compensation (d2l.ai section 9.7's
      ξ_t): each step's incoming state is cut with probability p = 1/mean, independently (the chunk starts), and
      the gradient it passes back is multiplied by 1/(1 − p) where it is not, so the expected gradient is full
      BPTT's; each update's loss is the sum of its steps' losses over `mean` (every step weighs the same). The
      price is variance: a path of n steps carries (1 − p)^-n. Needs mean > 1.

    YAML accepts the short forms `full`, a bare integer k (k1 = k2 = k), `{k1: .., k2: ..}` and
    `{mode: random_length, mean: ..}` / `{mode: unbiased, mean: ..}`.
    """

    mode: Literal["full", "tbptt", "random_length", "unbiased"] = "full"
    k1: int | None = pydantic.Field(None, ge=1)
    k2: int | None = pydantic.Field(None, ge=1)
    mean: float | None = pydantic.Field(None, ge=1.0)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _short_forms(cls, value):
        if isinstance(value, bool):
            return value  # rejected below with the type error
        if isinstance(value, int):
            return {"mode": "tbptt", "k1": value, "k2": value}
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "full":
                return {"mode": "full"}
            if text.isdigit():
                return {"mode": "tbptt", "k1": int(text), "k2": int(text)}
            parsed = truncation_from_label(text)  # the labels legends show: 10/20, rand20, unbiased20
            if isinstance(parsed, dict):
                return {"mode": "tbptt", **parsed} if "mode" not in parsed else parsed
            raise ValueError(
                f"got {_short_repr(value)}; expected `full`, a positive integer k, {{k1: .., k2: ..}}, "
                "{mode: random_length, mean: ..} (random-length TBPTT), {mode: unbiased, mean: ..} (compensated, "
                "unbiased) or a label as legends show them (10/20, rand20, unbiased20)"
            )
        if isinstance(value, Mapping) and "mode" not in value and ("k1" in value or "k2" in value):
            return {"mode": "tbptt", **value}
        return value

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.mode == "tbptt":
            if self.k1 is None or self.k2 is None:
                raise ValueError("tbptt needs both k1 and k2 (or a bare integer k for k1 = k2 = k)")
            if self.k1 > self.k2:
                raise ValueError(f"k1 ({self.k1}) must not exceed k2 ({self.k2}): an update cannot reach "
                                 "further back than it backpropagates")
            if self.mean is not None:
                raise ValueError("`mean` belongs to mode random_length, not tbptt")
        elif self.mode in ("random_length", "unbiased"):
            if self.mean is None:
                raise ValueError(f"{self.mode} truncation needs `mean`, the mean chunk length")
            if self.k1 is not None or self.k2 is not None:
                raise ValueError(f"{self.mode} truncation takes `mean`, not k1/k2")
            if self.mode == "unbiased" and self.mean <= 1.0:
                raise ValueError("unbiased truncation needs mean > 1: with mean 1 every step is cut and no "
                                 "gradient crosses a step to be compensated")
        elif any(v is not None for v in (self.k1, self.k2, self.mean)):
            raise ValueError("full BPTT takes no k1, k2 or mean")
        return self

    @property
    def label(self) -> str:
        """Short name used in tables and as the `training.truncation` param: full, 20, 10/20, rand20,
        unbiased20."""
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return str(self.k2) if self.k1 == self.k2 else f"{self.k1}/{self.k2}"
        return f"{'rand' if self.mode == 'random_length' else 'unbiased'}{self.mean:g}"

    @pydantic.model_serializer(mode="plain")
    def _short_form(self):
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return self.k1 if self.k1 == self.k2 else {"k1": self.k1, "k2": self.k2}
        return {"mode": self.mode, "mean": self.mean}


class TrainingConfig(_Frozen):
    """Optimisation. One epoch is `steps_per_epoch` batches of freshly drawn sequences.

    `clipnorm` clips the global gradient norm (all weights together); null disables clipping. The pre-clip
    norm is logged either way.

    `num_validation_sequences` sets how many sequences a task that generates them (adding, copy memory,
    waveform, dates) draws for validation; a task on a data set (forecasts, sine, sunspots, digits, text) is
    scored on all of its held-out data, each window once (`Task.validation_size`).

    Gradient flow over time (`rnnlib.worker.gradients`) is probed at initialisation and then on the `probe_every`
    schedule (`probe_due`): `auto` (the default) at the end of each epoch that ends at least `AUTO_PROBE_SPACING`
    batches after the previous probe, and at the end of the last epoch; `epoch` at the end of every epoch; a
    number N every N batches; 0 never. Each probe uses `num_probe_sequences` fixed sequences and is logged in
    the run's `gradient_flow.npz` artifact. Each probe also meters the truncation: the truncated parameter
    gradient against full BPTT's on those sequences, over `bias_samples` drawn schedules for a random mode.
    """

    epochs: int = pydantic.Field(10, ge=1, le=100_000)
    steps_per_epoch: int = pydantic.Field(50, ge=1, le=1_000_000)
    batch_size: int = pydantic.Field(32, ge=1, le=65_536)
    num_validation_sequences: int = pydantic.Field(256, ge=1, le=1_000_000)
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    learning_rate: float = pydantic.Field(1e-3, gt=0.0, le=10.0)
    clipnorm: float | None = pydantic.Field(1.0, gt=0.0)
    truncation: Truncation = Truncation()
    probe_every: Literal["auto", "epoch"] | Annotated[int, pydantic.Field(ge=0)] = "auto"
    num_probe_sequences: int = pydantic.Field(4, ge=1, le=256)
    bias_samples: int = pydantic.Field(8, ge=2, le=256)

    @pydantic.field_validator("probe_every", mode="before")
    @classmethod
    def _probe_schedule(cls, value):
        if value in ("auto", "epoch") or (type(value) is int and value >= 0) or (
                isinstance(value, str) and value.isdigit()):
            return value
        was = "; null meant `epoch` before schema version 4" if value is None else ""
        raise ValueError(f"expected `auto` (the default: at epoch ends about every {AUTO_PROBE_SPACING} batches, "
                         f"and at the end), `epoch` (every epoch end), a number of batches, or 0 (never){was}")

    def probe_due(self, step: int, last_probe: int) -> bool:
        """Whether to probe gradient flow after `step` batches, the last probe having been after `last_probe`."""
        every, epoch_end = self.probe_every, step % self.steps_per_epoch == 0
        if step == 0:
            return every != 0
        if every == "epoch":
            return epoch_end
        if every == "auto":
            last = step == self.epochs * self.steps_per_epoch
            return epoch_end and (last or step - last_probe >= AUTO_PROBE_SPACING)
        return bool(every) and step % every == 0

    def num_probes(self) -> int:
        """How many times `probe_due` probes over the whole training, initialisation included."""
        every, total = self.probe_every, self.epochs * self.steps_per_epoch
        if every == "auto":
            count, last = 1, 0
            for step in range(self.steps_per_epoch, total + 1, self.steps_per_epoch):
                if self.probe_due(step, last):
                    count, last = count + 1, step
            return count
        return self.epochs + 1 if every == "epoch" else total // every + 1 if every else 0


if typing.TYPE_CHECKING:
    TaskConfig = tasks.TaskParams  # the base of every member of the union below, which is built at run time
else:
    TaskConfig = Annotated[
        Union[tuple(task.params_type for task in tasks.TASKS.values())],  # noqa: UP007 - built from the registry
        pydantic.Field(discriminator="name"),
    ]


class ExecutionConfig(_Frozen):
    """How a sweep's trials run (`rnnlib.run.executors`); it changes no number a run logs, so it is no param.

    `sequential`: one after another in this process (the default). `processes`: in `workers` local worker
    processes (default: one per CPU core; each one's framework on cores / workers threads), each trial's logging
    written through this process, so that even a sqlite store has one writer. `ray`: each trial a Ray task
    needing `num_cpus` CPUs (its framework on as many threads) and `num_gpus` GPUs (a fraction packs several
    trials onto one GPU), at most `workers` at once (default: as many as the cluster's resources hold), on a
    local Ray or the cluster at `address`; logged through this process too.
    """

    executor: Literal["sequential", "processes", "ray"] = "sequential"
    workers: int | None = pydantic.Field(None, ge=1, le=4096)
    address: str | None = pydantic.Field(None, max_length=500)
    num_cpus: float = pydantic.Field(1.0, gt=0, le=1024)
    num_gpus: float = pydantic.Field(0.0, ge=0, le=64)


class ExperimentConfig(_Frozen):
    """One experiment: a task, a model, how to train it, a seed, and optionally a sweep `grid`.

    `grid` maps dotted config keys (`model.cell_type`, `training.truncation`, `task.length`, `seed`, ...) to
    lists of values; the experiment runs once per point of their cartesian product (see `expand_grid`).
    """

    name: str = pydantic.Field("experiment", min_length=1, max_length=200)
    description: str = ""
    task: TaskConfig
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    seed: int = pydantic.Field(0, ge=0, le=2**31 - 1)
    grid: dict[str, list[Any]] = {}
    execution: ExecutionConfig = ExecutionConfig()

    @pydantic.model_validator(mode="after")
    def _truncation_fits_sequence(self):
        trunc, length = self.training.truncation, self.task.sequence_length
        for key, value in (("k2", trunc.k2), ("mean", trunc.mean)):
            if value is not None and value > length:
                raise ValueError(
                    f"training.truncation {key}={value:g} is longer than the task's sequence ({length} steps); "
                    f"use at most {length}, or `full`"
                )
        return self

    @pydantic.model_validator(mode="after")
    def _autoregressive_fits(self):
        if self.model.kind not in AR_KINDS:
            return self
        name = f"model.kind {self.model.kind}"
        if self.training.truncation.mode != "full":
            raise ValueError(f"{name} is an AR(τ) model: it keeps no state, so there is nothing to truncate; use "
                             "training.truncation: full (its look-back is model.ar_order)")
        if self.model.ar_order > self.task.sequence_length:
            raise ValueError(f"model.ar_order ({self.model.ar_order}) is longer than the task's sequence "
                             f"({self.task.sequence_length} steps); use at most {self.task.sequence_length}")
        task = tasks.get(self.task.name)
        if task.target_form != "per_step":
            raise ValueError(f"{name} predicts at every step; task {self.task.name} answers once per sequence, "
                             f"so train a recurrent model ({', '.join(cells.CELLS)}) on it")
        if task.io_form != "seq2seq":
            raise ValueError(f"{name} predicts each step from the last {self.model.ar_order} inputs; task "
                             f"{self.task.name} is {task.io_form}, where the answer depends on inputs further back "
                             f"than any fixed window, so train a recurrent model ({', '.join(cells.CELLS)}) on it")
        return self

    def to_dict(self) -> dict:
        """Plain data that `parse_config` turns back into an equal config (the resolved YAML), with the
        `schema_version` it was written at first."""
        return {SCHEMA_KEY: SCHEMA_VERSION, **self.model_dump(mode="json")}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid)

    @property
    def architecture_key(self) -> str:
        """Text equal for two configs exactly when their model and task are: runs with one key in a process share
        the gradient probe's traced functions (`rnnlib.worker.gradients.FlowRecorder`), so the `processes`
        executor gives a worker the trials of keys it has traced already."""
        return self.model.model_dump_json() + self.task.model_dump_json()


def truncation_from_label(label) -> Any:
    """The YAML form of a truncation label (`Truncation.label`): full, 20, 10/20, rand20, unbiased20. Anything
    else is returned unchanged for validation to reject with its message."""
    text = str(label).strip().lower()
    k1, sep, k2 = text.partition("/")
    if sep and k1.isdigit() and k2.isdigit():
        return {"k1": int(k1), "k2": int(k2)}
    for prefix, mode in (("rand", "random_length"), ("unbiased", "unbiased")):
        if text.startswith(prefix):
            try:
                return {"mode": mode, "mean": float(text.removeprefix(prefix))}
            except ValueError:
                return label
    return int(text) if text.isdigit() else label


def flatten_params(config: ExperimentConfig) -> dict[str, str]:
    """The config as flat dotted keys -> strings: the MLflow params of a run (the grid is left out).

    `execution` is left out too: how trials run changes no number. `training.truncation` holds the short label
    (full, 20, 10/20, rand20); its parts are under
    `training.truncation.mode/k1/k2/mean` (empty when they do not apply). `model.label` names the model in one
    word (`ModelConfig.label`: rnn, lstm, gru, ar, ar_mlp).
    """
    data = config.model_dump(mode="python", exclude={"grid", "execution"})
    trunc = config.training.truncation
    data["training"]["truncation"] = trunc.label
    data["model"] = {"cell_type": None, **data["model"], "label": config.model.label}
    flat = _flatten(data)
    for part in ("mode", "k1", "k2", "mean"):
        value = getattr(trunc, part)
        flat[f"training.truncation.{part}"] = "" if value is None else _param_text(value)
    return flat


def _flatten(data: Mapping, prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = _param_text(value)
    return flat


def _param_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML, applying `--set key=value` overrides first.

    The experiment `name` defaults to the file's stem. Raises `ConfigError` for any problem.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise ConfigError([f"the file is {size:,} bytes, more than the {MAX_YAML_BYTES:,} an experiment may "
                               "have; an experiment YAML is a few hundred bytes"], source=str(path))
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"cannot read {path}: {error}"], source=str(path)) from None
    return parse_config(text, source=str(path), overrides=overrides, default_name=path.stem)


def parse_config(
    text: str, source: str = "<string>", overrides: Sequence[str] = (), default_name: str | None = None
) -> ExperimentConfig:
    """Validate YAML text; see `load_config`. Text written at an older `schema_version` is migrated first;
    text from a newer one is refused (`read_logged_config` reads logged runs of any version)."""
    raw = load_yaml(text, source)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys (task, model, training, ...), got a {type(raw).__name__}"],
            source=source,
        )
    raw, version = migrate(raw, source)
    if version > SCHEMA_VERSION:
        raise ConfigError([f"{SCHEMA_KEY}: {version} is newer than this version of the lab reads "
                           f"({SCHEMA_VERSION}); update rnnlib, or remove keys it does not know and the version"],
                          source=source)
    raw = apply_overrides(raw, overrides, source=source)
    if default_name is not None:
        raw.setdefault("name", default_name)
    return validate(raw, source=source)


if typing.TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader  # the same interface; which one is picked at run time
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
    """PyYAML's safe loader (libyaml's, when PyYAML has it: 20x faster) that refuses a key given twice in one
    mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}  # key -> the line it was first on
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML safely: refused in well under a second, with one `ConfigError`, when the text is larger than
    `MAX_YAML_BYTES`, nests deeper than `MAX_YAML_DEPTH`, holds more than `MAX_YAML_VALUES` values once its
    aliases are expanded (a "billion laughs" bomb), or repeats a key."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError([f"the text is {len(text):,} characters, more than the {MAX_YAML_BYTES:,} an experiment "
                           "may have"], source=source)
    if _bracket_depth(text) > 5 * MAX_YAML_DEPTH:  # libyaml's composer recurses in C: 100,000 `[` crash it
        raise ConfigError([f"the YAML nests deeper than {MAX_YAML_DEPTH} levels"], source=source)
    if sum(text.count(mark) for mark in ":,-\n") > 2 * MAX_YAML_VALUES:  # ~ one mark per value: refuse unread
        raise ConfigError([f"the YAML holds more than {MAX_YAML_VALUES:,} values; an experiment needs a few dozen"],
                          source=source)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {error}"], source=source) from None
    except RecursionError:
        raise ConfigError([f"the YAML nests deeper than {MAX_YAML_DEPTH} levels"], source=source) from None
    except _TooLarge as error:
        raise ConfigError([str(error)], source=source) from None
    finally:
        loader.dispose()


class _TooLarge(Exception):
    pass


def _bracket_depth(text: str) -> int:
    """The deepest nesting of flow brackets `[` `{` in `text`, quotes ignored (an upper bound, for a cheap
    first check)."""
    import numpy as np

    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    steps = np.isin(codes, (ord("["), ord("{"))).astype(np.int32) - np.isin(codes, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def _check_size(root) -> None:
    """Count the values of a composed YAML graph with aliases expanded (shared nodes are counted once per use,
    memoised, so a bomb is measured without being expanded) and its depth."""
    sizes: dict[int, int] = {}
    stack = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise _TooLarge(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels")
        if id(node) in sizes:
            continue
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if children_done or not children:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > MAX_YAML_VALUES:
                raise _TooLarge(f"the YAML holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) "
                                "are expanded (an experiment needs a few dozen); use fewer aliases")
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


# ---- Versions: `MIGRATIONS[v]` turns raw config data written at version v into version v + 1.

def _random_length_mode(value):
    """`{mode: randomized, mean: m}` -> `{mode: random_length, mean: m}` (the mode's name since version 2)."""
    if isinstance(value, Mapping) and value.get("mode") == "randomized":
        return {**value, "mode": "random_length"}
    return "random_length" if value == "randomized" else value


def _v1_to_v2(raw: dict) -> dict:
    """Version 2 names the random-length truncation mode `random_length` (it was `randomized`, a name that
    suggested Tallec & Ollivier's unbiased estimator, which it is not)."""
    training = raw.get("training")
    if isinstance(training, Mapping) and "truncation" in training:
        raw["training"] = {**training, "truncation": _random_length_mode(training["truncation"])}
    grid = raw.get("grid")
    if isinstance(grid, Mapping):
        raw["grid"] = {key: [_random_length_mode(v) for v in values]
                       if key in ("training.truncation", "training.truncation.mode") and isinstance(values, list)
                       else values for key, values in grid.items()}
    return raw


def _v2_to_v3(raw: dict) -> dict:
    """Version 3 makes the AR(τ) baselines a model family of their own: `model.cell_type: ar` (or `ar_mlp`)
    becomes `model.kind: ar` (`ar_mlp`), and a grid over cell types that mixes them with recurrent cells becomes
    a grid over `model.kind` and `model.cell_type` (which `expand_grid` runs once per distinct model)."""
    model = raw.get("model")
    if isinstance(model, Mapping) and model.get("cell_type") in AR_KINDS and "kind" not in model:
        raw["model"] = {**{k: v for k, v in model.items() if k != "cell_type"}, "kind": model["cell_type"]}
    grid = raw.get("grid")
    if isinstance(grid, Mapping) and isinstance(grid.get("model.cell_type"), list) and "model.kind" not in grid:
        values = grid["model.cell_type"]
        kinds = [v for v in values if v in AR_KINDS]
        if kinds:
            recurrent = [v for v in values if v not in AR_KINDS]
            swept = {"model.kind": (["recurrent"] if recurrent else []) + kinds}
            if recurrent:
                swept["model.cell_type"] = recurrent
            raw["grid"] = {**{k: v for k, v in grid.items() if k != "model.cell_type"}, **swept}
    return raw


def _probe_schedule(value):
    """`probe_every: null` -> `epoch` (what null meant before version 4, whose default `auto` probes less)."""
    return "epoch" if value is None else value


def _v3_to_v4(raw: dict) -> dict:
    """Version 4's default probe schedule is `auto` (about every 500 batches); null, which meant every epoch
    end and was the default before, is spelt `epoch`. Configs that leave `probe_every` out take the new default."""
    training = raw.get("training")
    if isinstance(training, Mapping) and "probe_every" in training:
        raw["training"] = {**training, "probe_every": _probe_schedule(training["probe_every"])}
    grid = raw.get("grid")
    if isinstance(grid, Mapping) and isinstance(grid.get("training.probe_every"), list):
        raw["grid"] = {**grid, "training.probe_every": [_probe_schedule(v) for v in grid["training.probe_every"]]}
    return raw


def upgrade_params(params: Mapping[str, str]) -> dict[str, str]:
    """A logged run's flat params (`flatten_params`) with the keys of the current schema filled in from older
    ones: runs logged before version 3 have no `model.kind` / `model.label`, and an AR(τ) baseline's
    `model.cell_type` was `ar` or `ar_mlp`; before version 4 an empty `training.probe_every` (null) meant
    `epoch`. Params already current come back unchanged."""
    params = dict(params)
    if params.get("training.probe_every") == "":
        params["training.probe_every"] = "epoch"
    cell_type = params.get("model.cell_type")
    if "model.kind" not in params and cell_type is not None:
        kind = cell_type if cell_type in AR_KINDS else "recurrent"
        params["model.kind"] = kind
        if kind != "recurrent":
            params["model.cell_type"] = ""
        params.setdefault("model.label", cell_type)
    return params


MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}
assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION)), "every version but the current one needs a migration"


def migrate(raw: Mapping, source: str = "<string>") -> tuple[dict, int]:
    """Raw config data brought to `SCHEMA_VERSION` (without its `schema_version` key), and the version it was
    written at (1 when it says none). Data from a newer version is returned as it is."""
    raw = dict(raw)
    version = raw.pop(SCHEMA_KEY, 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError([f"{SCHEMA_KEY}: expected a whole number from 1 to {SCHEMA_VERSION} "
                           f"(got {_short_repr(version)})"], source=source)
    for step in range(version, SCHEMA_VERSION):
        raw = MIGRATIONS[step](raw)
    return raw, version


@dataclasses.dataclass(frozen=True)
class LoggedConfig:
    """A run's logged config as this version reads it.

    Attributes:
        config: the config, with keys this version does not know left out and missing ones at their defaults.
        schema_version: the version it was written at.
        unknown: the keys this version does not know (from a later version), dotted, with their values: kept
            and shown, not used.
    """

    config: ExperimentConfig
    schema_version: int
    unknown: dict[str, Any]


def read_logged_config(text: str, source: str = "config.yaml") -> LoggedConfig:
    """Read a run's logged `config.yaml` of any schema version, leniently: older versions are migrated, keys
    this version does not know are set aside (`LoggedConfig.unknown`), missing keys take their defaults.

    Raises:
        ConfigError: when what is left still does not validate (e.g. a task this version does not have).
    """
    raw = load_yaml(text, source)
    if not isinstance(raw, dict):
        raise ConfigError(["the logged config is not a mapping of keys"], source=source)
    raw, version = migrate(raw, source)
    known, unknown = split_unknown(raw)
    try:
        config = _validate_one(known, source)
    except ConfigError as error:
        later = f" (written by schema version {version}; this version reads {SCHEMA_VERSION})" \
            if version > SCHEMA_VERSION else ""
        raise ConfigError([p + later for p in error.problems], source=source) from None
    return LoggedConfig(config, version, unknown)


def split_unknown(raw: Mapping) -> tuple[dict, dict[str, Any]]:
    """(the keys this version's schema has, {dotted key: value} of the others), at every level of a config."""
    unknown: dict[str, Any] = {}

    def keep(data, fields, prefix):
        if not isinstance(data, Mapping):
            return data
        for key in data:
            if key not in fields:
                unknown[f"{prefix}{key}"] = data[key]
        return {key: value for key, value in data.items() if key in fields}

    known = keep(raw, ExperimentConfig.model_fields, "")
    for section, model in (("model", ModelConfig), ("training", TrainingConfig)):
        if section in known:
            known[section] = keep(known[section], model.model_fields, f"{section}.")
    training = known.get("training")
    if isinstance(training, dict) and isinstance(training.get("truncation"), Mapping):  # `keep` made it a dict
        training["truncation"] = keep(training["truncation"], Truncation.model_fields, "training.truncation.")
    task = known.get("task")
    if isinstance(task, Mapping) and task.get("name") in tasks.TASKS:
        known["task"] = keep(task, tasks.get(task["name"]).params_type.model_fields, "task.")
    return known, unknown


def validate(raw: Mapping, source: str = "<string>") -> ExperimentConfig:
    """Validate plain data (a parsed YAML mapping), including every point of its grid."""
    config = _validate_one(raw, source)
    problems = _grid_problems(config, raw)
    if problems:
        raise ConfigError(problems, source=source)
    return config


def _validate_one(raw: Mapping, source: str, context: str = "") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except pydantic.ValidationError as error:
        raise ConfigError([context + p for p in _describe(error)], source=source) from None
    except (RecursionError, OverflowError, TypeError) as error:  # pathological input, e.g. deeply nested
        raise ConfigError([f"{context}unreadable value: {error}"], source=source) from None


def _describe(error: pydantic.ValidationError) -> list[str]:
    """One line per pydantic error: `key: problem (got value)`."""
    lines = []
    for item in error.errors(include_url=False):
        loc = [str(part) for part in item["loc"] if not str(part).startswith("function-")]
        if len(loc) >= 2 and loc[0] == "task" and loc[1] in tasks.TASKS:
            loc.pop(1)  # the discriminated union repeats the task name in the location
        if item["type"] == "boolean_number":  # raised for a whole task: name the field it is about
            loc.append(item["ctx"]["field"])
            item["input"] = item["ctx"]["value"]
        key = ".".join(loc) or "(top level)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = f"unknown key; allowed here: {', '.join(_allowed_keys(loc[:-1]))}"
        elif item["type"] == "union_tag_invalid":
            key, item["input"] = "task.name", item.get("ctx", {}).get("tag")
            message = f"unknown task; expected one of: {', '.join(tasks.TASKS)}"
        elif item["type"] == "union_tag_not_found":
            message = f"missing `name`; expected one of: {', '.join(tasks.TASKS)}"
        if not loc:  # cross-field checks name their keys themselves
            lines.append(message)
            continue
        value = item.get("input")
        shown = "" if item["type"] in ("missing", "union_tag_not_found") else f" (got {_short_repr(value)})"
        lines.append(f"{key}: {message}{shown}")
    return lines


def _allowed_keys(loc: list[str]) -> list[str]:
    models: dict[tuple[str, ...], type[pydantic.BaseModel]] = {
        (): ExperimentConfig,
        ("model",): ModelConfig,
        ("training",): TrainingConfig,
        ("training", "truncation"): Truncation,
        ("execution",): ExecutionConfig,
    }
    model = models.get(tuple(loc))
    if model is None and len(loc) == 1 and loc[0] == "task":
        return sorted({f for t in tasks.TASKS.values() for f in t.params_type.model_fields})
    return list(model.model_fields) if model else []


_REPR = reprlib.Repr()  # keyword arguments need Python 3.12
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 4, 50, 50


def _short_repr(value, limit: int = 60) -> str:
    """A bounded repr: nested containers are cut before they are printed, never after."""
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _grid_problems(config: ExperimentConfig, raw: Mapping) -> list[str]:
    if not config.grid:
        return []
    problems = []
    for key, values in config.grid.items():
        if key == "grid" or key.startswith("grid.") or key == "name":
            problems.append(f"grid.{key}: cannot sweep over `{key}`")
        elif not values:
            problems.append(f"grid.{key}: empty list; give at least one value or remove the key")
    size = math.prod(len(v) for v in config.grid.values())
    if size > MAX_GRID_POINTS:
        problems.append(f"grid: {size} points is more than the {MAX_GRID_POINTS} allowed; sweep fewer values")
    if problems:
        return problems
    base = {k: v for k, v in raw.items() if k != "grid"}
    for key, values in config.grid.items():  # each value alone first: errors then name the list item
        for index, value in enumerate(values):
            problems += _point_problems(base, {key: value}, f"grid.{key}[{index}] = {_short_repr(value)}: ")
    if not problems:
        for point in _product(config.grid):
            problems += _point_problems(base, point, f"grid point {_point_text(point)}: ")
            if problems:
                break
    return list(dict.fromkeys(problems))


def _point_problems(base: Mapping, point: Mapping, context: str) -> list[str]:
    try:
        _validate_one(_with_values(base, point), "", context)
    except ConfigError as error:
        return error.problems
    return []


def _product(grid: Mapping[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _point_text(point: Mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items())


def expand_grid(config: ExperimentConfig) -> list[tuple[dict, ExperimentConfig]]:
    """The runs of a sweep: `(point, config)` pairs, one per grid point, each config without a grid.

    A config with no grid expands to itself with the empty point. A grid over `model.kind` and
    `model.cell_type` runs each AR(τ) point once (an AR model has no cell), `model.cell_type` left out of its
    point.
    """
    if not config.grid:
        return [({}, config)]
    base = {k: v for k, v in config.model_dump(mode="json").items() if k != "grid"}
    runs, seen = [], set()
    for point in _product(config.grid):
        trial = ExperimentConfig.model_validate(_with_values(base, point))
        if trial.model.cell_type is None and "model.cell_type" in point:
            point = {k: v for k, v in point.items() if k != "model.cell_type"}
            key = repr(sorted(point.items()))
            if key in seen:
                continue  # this AR point ran already, with another (ignored) cell
            seen.add(key)
        runs.append((point, trial))
    return runs


def describe_grid(config: ExperimentConfig) -> str:
    """How many runs a launch of `config` makes and why: `12 runs: 3 model.cell_type × 2 training.truncation ×
    2 seed`, `1 run`; AR points counted once (`expand_grid`)."""
    count = len(expand_grid(config))
    factors = [f"{len(values)} {key}" for key, values in config.grid.items() if len(values) > 1]
    total = f"{count} run" + ("" if count == 1 else "s")
    product = math.prod(len(values) for values in config.grid.values())
    if not factors:
        return total
    return f"{total}: " + " × ".join(factors) + (" (AR points once)" if product != count else "")


def _with_values(raw: Mapping, point: Mapping) -> dict:
    result = copy.deepcopy(dict(raw))
    for key, value in point.items():
        _set_dotted(result, key, value)
    return result


def _set_dotted(raw: dict, key: str, value) -> None:
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            shown = ".".join(parts[: depth + 1])
            raise ConfigError([f"{key}: cannot set it, because {shown} is {child!r}, not a mapping"])
        node = child
    node[parts[-1]] = value


def apply_overrides(raw: Mapping, overrides: Sequence[str], source: str = "<string>") -> dict:
    """Apply `key=value` overrides; values are parsed as YAML (`seed=3`, `grid.seed=[0, 1]`, `grid={}`).

    Keys under `grid.` name one grid entry whose own key may contain dots: `grid.model.cell_type=[rnn, gru]`.
    """
    result = copy.deepcopy(dict(raw))
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError([f"--set {item!r}: expected key=value, e.g. --set task.length=200"], source=source)
        try:
            value = load_yaml(text)
        except ConfigError as error:
            raise ConfigError([f"--set {key}: value {_short_repr(text)} is "
                               + (p if p.startswith("not valid YAML") else f"refused: {p}") for p in error.problems],
                              source=source) from None
        if key.startswith("grid."):
            grid = result.get("grid")
            if not isinstance(grid, dict):
                grid = result["grid"] = {}
            grid[key.removeprefix("grid.")] = value
        else:
            try:
                _set_dotted(result, key, value)
            except ConfigError as error:
                raise ConfigError([f"--set {p}" for p in error.problems], source=source) from None
    return result
