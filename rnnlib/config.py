"""Experiment configs: YAML -> one validated, frozen `ExperimentConfig`, or a `ConfigError` naming what is wrong.

An experiment YAML looks like::

    name: adding_cells
    task: {name: adding, length: 100}
    model: {cell_type: lstm, units: 64, num_layers: 1, dropout: 0.0}
    training:
      epochs: 10
      steps_per_epoch: 50
      batch_size: 32
      optimizer: adam
      learning_rate: 0.001
      clipnorm: 1.0           # clip the global gradient norm; null for no clipping
      truncation: full        # full | k | {k1: 5, k2: 10} | {mode: randomized, mean: 20}
    seed: 0
    grid:                     # optional sweep: the cartesian product of these values
      model.cell_type: [rnn, lstm, gru]
      seed: [0, 1, 2]

Only this module turns untrusted input into configs; everything downstream takes a valid config.
"""

import copy
import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import pydantic
import yaml

from rnnlib import tasks
from rnnlib.errors import ConfigError

CELL_TYPES = ("rnn", "lstm", "gru")
AR_MODELS = ("ar", "ar_mlp")  # autoregressive baselines: no state, a fixed look-back of `ar_order` steps
OPTIMIZERS = ("adam", "rmsprop", "sgd")
TRUNCATION_MODES = ("full", "tbptt", "randomized")
MAX_GRID_POINTS = 10_000
EXPERIMENTS_DIR = Path(__file__).resolve().parent.parent / "experiments"


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Frozen):
    """The recurrent network: `num_layers` stacked layers of `units` cells of `cell_type`.

    `dropout` is applied between stacked layers (never on the recurrent connection, which would rule out
    cuDNN). `recurrent_gain` scales the orthogonal initial recurrent weights (Keras' default, gain 1): above 1
    a tanh RNN starts with a spectral radius above 1, the setting where gradients explode (Pascanu et al. 2013).

    `cell_type` may also name an AR(τ) baseline (d2l.ai "Sequence models"), which predicts from the last
    τ = `ar_order` inputs only and keeps no state: `ar`, linear in them, or `ar_mlp`, a multilayer perceptron
    with `num_layers` hidden layers of `units` ReLU units. Comparing them with the recurrent cells on one series
    asks whether a latent state beats a fixed look-back.
    """

    cell_type: Literal["rnn", "lstm", "gru", "ar", "ar_mlp"] = "lstm"
    units: int = pydantic.Field(64, ge=1, le=4096)
    num_layers: int = pydantic.Field(1, ge=1, le=16)
    dropout: float = pydantic.Field(0.0, ge=0.0, lt=1.0)
    recurrent_gain: float = pydantic.Field(1.0, gt=0.0, le=10.0)
    ar_order: int = pydantic.Field(8, ge=1, le=10_000)

    @property
    def is_autoregressive(self) -> bool:
        return self.cell_type in AR_MODELS


class Truncation(_Frozen):
    """How far back gradients flow.

    - `full`: backpropagation through the whole sequence.
    - `tbptt`: every k1 steps, backpropagate k2 steps (k1 <= k2; Williams & Peng 1990, Sutskever 2013). The
      hidden state is carried across chunks, so memory is bounded by k2, not the sequence length.
    - `randomized`: consecutive chunks of random length (geometric, mean `mean`), k1 = k2 = the chunk length
      (randomized truncation, Tallec & Ollivier 2017; d2l.ai section 9.7).

    YAML accepts the short forms `full`, a bare integer k (k1 = k2 = k), `{k1: .., k2: ..}` and
    `{mode: randomized, mean: ..}`.
    """

    mode: Literal["full", "tbptt", "randomized"] = "full"
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
            raise ValueError(
                f"got {value!r}; expected `full`, a positive integer k, {{k1: .., k2: ..}} or "
                "{mode: randomized, mean: ..}"
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
                raise ValueError("`mean` belongs to mode randomized, not tbptt")
        elif self.mode == "randomized":
            if self.mean is None:
                raise ValueError("randomized truncation needs `mean`, the mean truncation length")
            if self.k1 is not None or self.k2 is not None:
                raise ValueError("randomized truncation takes `mean`, not k1/k2")
        elif any(v is not None for v in (self.k1, self.k2, self.mean)):
            raise ValueError("full BPTT takes no k1, k2 or mean")
        return self

    @property
    def label(self) -> str:
        """Short name used in tables and as the `training.truncation` param: full, 20, 10/20, rand20."""
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return str(self.k2) if self.k1 == self.k2 else f"{self.k1}/{self.k2}"
        return f"rand{self.mean:g}"

    @property
    def horizon(self) -> int | None:
        """The longest backpropagation span, or None for full."""
        return {"full": None, "tbptt": self.k2, "randomized": None}[self.mode]

    @pydantic.model_serializer(mode="plain")
    def _short_form(self):
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return self.k1 if self.k1 == self.k2 else {"k1": self.k1, "k2": self.k2}
        return {"mode": "randomized", "mean": self.mean}


class TrainingConfig(_Frozen):
    """Optimisation. One epoch is `steps_per_epoch` batches of freshly drawn sequences.

    `clipnorm` clips the global gradient norm (all weights together); null disables clipping. The pre-clip
    norm is logged either way.

    Gradient flow over time (`rnnlib.gradients`) is probed at initialisation and then every `probe_every`
    batches (null: at the end of every epoch; 0: never) on `num_probe_sequences` fixed sequences, and logged as
    the run's `gradient_flow.npz` artifact.
    """

    epochs: int = pydantic.Field(10, ge=1, le=100_000)
    steps_per_epoch: int = pydantic.Field(50, ge=1, le=1_000_000)
    batch_size: int = pydantic.Field(32, ge=1, le=65_536)
    num_validation_sequences: int = pydantic.Field(256, ge=1, le=1_000_000)
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    learning_rate: float = pydantic.Field(1e-3, gt=0.0, le=10.0)
    clipnorm: float | None = pydantic.Field(1.0, gt=0.0)
    truncation: Truncation = Truncation()
    probe_every: int | None = pydantic.Field(None, ge=0)
    num_probe_sequences: int = pydantic.Field(4, ge=1, le=256)


TaskConfig = Annotated[
    Union[tuple(task.params_type for task in tasks.TASKS.values())],  # noqa: UP007 - built from the registry
    pydantic.Field(discriminator="name"),
]


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
        if not self.model.is_autoregressive:
            return self
        name = f"model.cell_type {self.model.cell_type}"
        if self.training.truncation.mode != "full":
            raise ValueError(f"{name} is an AR(τ) model: it keeps no state, so there is nothing to truncate; use "
                             "training.truncation: full (its look-back is model.ar_order)")
        if self.model.ar_order > self.task.sequence_length:
            raise ValueError(f"model.ar_order ({self.model.ar_order}) is longer than the task's sequence "
                             f"({self.task.sequence_length} steps); use at most {self.task.sequence_length}")
        task = tasks.get(self.task.name)
        if task.target_form != "per_step":
            raise ValueError(f"{name} predicts at every step; task {self.task.name} answers once per sequence, "
                             "so train a recurrent cell (rnn, lstm, gru) on it")
        if task.io_form != "seq2seq":
            raise ValueError(f"{name} predicts each step from the last {self.model.ar_order} inputs; task "
                             f"{self.task.name} is {task.io_form}, where the answer depends on inputs further back "
                             "than any fixed window, so train a recurrent cell (rnn, lstm, gru) on it")
        return self

    def to_dict(self) -> dict:
        """Plain data that `parse_config` turns back into an equal config (the resolved YAML)."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def is_sweep(self) -> bool:
        return bool(self.grid)


def truncation_from_label(label) -> Any:
    """The YAML form of a truncation label (`Truncation.label`): full, 20, 10/20, rand20. Anything else is
    returned unchanged for validation to reject with its message."""
    text = str(label).strip().lower()
    k1, sep, k2 = text.partition("/")
    if sep and k1.isdigit() and k2.isdigit():
        return {"k1": int(k1), "k2": int(k2)}
    if text.startswith("rand"):
        try:
            return {"mode": "randomized", "mean": float(text.removeprefix("rand"))}
        except ValueError:
            return label
    return int(text) if text.isdigit() else label


def flatten_params(config: ExperimentConfig) -> dict[str, str]:
    """The config as flat dotted keys -> strings: the MLflow params of a run (the grid is left out).

    `training.truncation` holds the short label (full, 20, 10/20, rand20); its parts are under
    `training.truncation.mode/k1/k2/mean` (empty when they do not apply).
    """
    data = config.model_dump(mode="python", exclude={"grid"})
    trunc = config.training.truncation
    data["training"]["truncation"] = trunc.label
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
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"file not found: {path}"], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([f"cannot read {path}: {error}"], source=str(path)) from None
    return parse_config(text, source=str(path), overrides=overrides, default_name=path.stem)


def parse_config(
    text: str, source: str = "<string>", overrides: Sequence[str] = (), default_name: str | None = None
) -> ExperimentConfig:
    """Validate YAML text; see `load_config`."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"not valid YAML: {error}"], source=source) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"the top level must be a mapping of keys (task, model, training, ...), got a {type(raw).__name__}"],
            source=source,
        )
    raw = apply_overrides(raw, overrides, source=source)
    if default_name is not None:
        raw.setdefault("name", default_name)
    return validate(raw, source=source)


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
    models = {
        (): ExperimentConfig,
        ("model",): ModelConfig,
        ("training",): TrainingConfig,
        ("training", "truncation"): Truncation,
    }
    model = models.get(tuple(loc))
    if model is None and len(loc) == 1 and loc[0] == "task":
        return sorted({f for t in tasks.TASKS.values() for f in t.params_type.model_fields})
    return list(model.model_fields) if model else []


def _short_repr(value, limit: int = 60) -> str:
    text = repr(value)
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

    A config with no grid expands to itself with the empty point.
    """
    if not config.grid:
        return [({}, config)]
    base = {k: v for k, v in config.to_dict().items() if k != "grid"}
    return [(point, ExperimentConfig.model_validate(_with_values(base, point))) for point in _product(config.grid)]


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
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ConfigError([f"--set {key}: value {text!r} is not valid YAML: {error}"], source=source) from None
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
