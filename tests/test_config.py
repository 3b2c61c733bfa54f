import math

import pydantic
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CELL_LIST, EXPERIMENTS_DIR
from rnnlib.core import config as cfg
from rnnlib.core.errors import ConfigError

MINIMAL = "task: {name: adding, length: 50}\n"


def problems(text, overrides=()):
    with pytest.raises(ConfigError) as info:
        cfg.parse_config(text, overrides=overrides)
    return "\n".join(info.value.problems)


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bundled_experiment_is_valid(path):
    config = cfg.load_config(path)
    # Named after its file, unless it is one part of an experiment split over files (AR and RNN runs of one
    # comparison cannot share a grid): then every part names the same experiment.
    parts = [p for p in EXPERIMENTS_DIR.glob("*.yaml") if cfg.load_config(p).name == config.name]
    assert config.name == path.stem or len(parts) > 1
    assert len(cfg.expand_grid(config)) >= 1


def test_defaults_fill_everything_but_the_task():
    config = cfg.parse_config(MINIMAL)
    assert config.model.cell_type == "lstm"
    assert config.training.truncation.mode == "full"
    assert config.grid == {}


def test_config_is_frozen():
    config = cfg.parse_config(MINIMAL)
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        config.seed = 3


@pytest.mark.parametrize(
    ("text", "mode", "k1", "k2", "mean", "label"),
    [
        ("full", "full", None, None, None, "full"),
        ("20", "tbptt", 20, 20, None, "20"),
        ("{k1: 5, k2: 10}", "tbptt", 5, 10, None, "5/10"),
        ("{mode: tbptt, k1: 4, k2: 4}", "tbptt", 4, 4, None, "4"),
        ("{mode: random_length, mean: 8}", "random_length", None, None, 8.0, "rand8"),
        ("{mode: randomized, mean: 8}", "random_length", None, None, 8.0, "rand8"),  # its name in version 1
        ("{mode: unbiased, mean: 2.5}", "unbiased", None, None, 2.5, "unbiased2.5"),
    ],
)
def test_truncation_short_forms(text, mode, k1, k2, mean, label):
    trunc = cfg.parse_config(MINIMAL + f"training: {{truncation: {text}}}\n").training.truncation
    assert (trunc.mode, trunc.k1, trunc.k2, trunc.mean, trunc.label) == (mode, k1, k2, mean, label)


def test_resolved_yaml_round_trips_to_an_equal_config():
    text = MINIMAL + "training: {truncation: {k1: 5, k2: 10}}\ngrid: {model.cell_type: [rnn, gru], seed: [0, 1]}\n"
    config = cfg.parse_config(text)
    assert cfg.parse_config(config.to_yaml()) == config


def test_grid_expands_to_the_cartesian_product():
    config = cfg.parse_config(
        MINIMAL + "grid:\n  model.cell_type: [rnn, lstm, gru]\n  training.truncation: [full, 5, 20, 50]\n"
        "  seed: [0, 1, 2]\n"
    )
    runs = cfg.expand_grid(config)
    assert len(runs) == 36
    assert all(run.grid == {} for _, run in runs)
    combos = {(r.model.cell_type, r.training.truncation.label, r.seed) for _, r in runs}
    assert len(combos) == 36
    point, first = runs[1]
    assert point == {"model.cell_type": "rnn", "training.truncation": "full", "seed": 1}
    assert first.seed == 1


def test_flattened_params_use_dotted_keys_and_the_truncation_label():
    params = cfg.flatten_params(cfg.parse_config(MINIMAL + "training: {truncation: {k1: 5, k2: 10}}\n"))
    assert params["model.cell_type"] == "lstm"
    assert params["task.length"] == "50"
    assert params["training.truncation"] == "5/10"
    assert (params["training.truncation.k1"], params["training.truncation.k2"]) == ("5", "10")
    assert params["training.truncation.mean"] == ""
    assert params["seed"] == "0"
    assert "grid" not in params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "model: {cell_type: lstmm}",
         f"model.cell_type: unknown cell; expected one of: {CELL_LIST} (got 'lstmm')"),
        (MINIMAL + "model: {units: many}", "model.units"),
        (MINIMAL + "model: {unit: 3}",
         "model.unit: unknown key; allowed here: kind, cell_type, units, num_layers, dropout"),
        (MINIMAL + "colour: blue", "colour: unknown key"),
        ("task: {name: addin}", "task.name: unknown task; expected one of: adding, copy_memory, sine, sunspots"),
        ("task: {length: 3}", "task: missing `name`"),
        ("model: {units: 4}", "task: Field required"),
        (MINIMAL + "training: {truncation: 60}", "training.truncation k2=60 is longer than the task's sequence (50"),
        (MINIMAL + "training: {truncation: {k1: 9, k2: 3}}", "k1 (9) must not exceed k2 (3)"),
        (MINIMAL + "training: {truncation: sometimes}", "expected `full`, a positive integer k"),
        (MINIMAL + "training: {truncation: {mode: random_length}}", "random_length truncation needs `mean`"),
        (MINIMAL + "training: {truncation: {mode: unbiased, mean: 1}}", "unbiased truncation needs mean > 1"),
        (MINIMAL + "training: {learning_rate: -1}", "training.learning_rate: Input should be greater than 0"),
        (MINIMAL + "training: {learning_rate: .nan}", "training.learning_rate"),
        (MINIMAL + "grid: {seed: []}", "grid.seed: empty list"),
        (MINIMAL + "grid: {seed: 3}", "grid.seed: Input should be a valid list"),
        (MINIMAL + "grid: {model.cell_type: [rnn, elman]}", "grid.model.cell_type[1] = 'elman': model.cell_type"),
        (MINIMAL + "grid: {training.truncation: [5, 80]}", "grid.training.truncation[1] = 80: training.truncation"),
        (MINIMAL + "grid: {model.colour: [1]}", "model.colour: unknown key"),
        ("task: {name: sine, window: 900}", "window (900) leaves no complete window"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("task: {name: adding\n", "not valid YAML"),
    ],
)
def test_bad_input_names_the_key_the_value_and_what_is_allowed(text, expected):
    assert expected in problems(text)


def test_grid_points_are_checked_together():
    text = "task: {name: adding, length: 50}\ngrid: {task.length: [10, 50], training.truncation: [full, 20]}\n"
    assert "grid point task.length=10, training.truncation=20" in problems(text)


def test_overrides_reach_any_key_including_the_grid():
    text = MINIMAL + "grid: {seed: [0, 1, 2], model.cell_type: [rnn, gru]}\n"
    overrides = ["task.length=200", "grid.seed=[0]", "training.truncation={k1: 2, k2: 4}"]
    config = cfg.parse_config(text, overrides=overrides)
    assert config.task.length == 200
    assert config.grid == {"seed": [0], "model.cell_type": ["rnn", "gru"]}
    assert config.training.truncation.label == "2/4"
    assert cfg.parse_config(text, overrides=["grid={}"]).grid == {}
    assert cfg.parse_config(text, overrides=["grid.model.cell_type=[lstm]"]).grid["model.cell_type"] == ["lstm"]


@pytest.mark.parametrize(
    ("override", "expected"),
    [("task.length", "expected key=value"), ("seed=[", "is not valid YAML"), ("task.length.x=1", "task.length is 50")],
)
def test_bad_overrides_get_a_clear_message(override, expected):
    assert expected in problems(MINIMAL, overrides=[override])


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        cfg.load_config(tmp_path / "nope.yaml")


# Fuzzing: any YAML-shaped input either validates or raises ConfigError, never anything else.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True), st.text(max_size=12),
    st.sampled_from(["rnn", "lstm", "gru", "full", "adding", "copy_memory", "sine", "sunspots", "random_length"]),
)
keys = st.sampled_from(
    ["name", "task", "model", "training", "seed", "grid", "length", "delay", "window", "cell_type", "units",
     "num_layers", "dropout", "epochs", "truncation", "k1", "k2", "mean", "mode", "clipnorm", "learning_rate",
     "model.cell_type", "training.truncation", "task.length", "bogus"]
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5),
                      max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=7))
def test_fuzzed_mappings_validate_or_raise_config_error(raw):
    try:
        config = cfg.validate(raw)
    except ConfigError as error:
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
    else:
        assert isinstance(config, cfg.ExperimentConfig)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_yaml_text_validates_or_raises_config_error(text):
    try:
        cfg.parse_config(text)
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["task.length", "seed", "model.units", "training.truncation"]),
                       st.lists(st.integers(-5, 300), min_size=1, max_size=3), min_size=1))
def test_fuzzed_grids_expand_to_valid_configs_or_raise(grid):
    raw = yaml.safe_load(MINIMAL) | {"grid": grid}
    try:
        config = cfg.validate(raw)
    except ConfigError:
        return
    runs = cfg.expand_grid(config)
    assert len(runs) == math.prod(len(v) for v in grid.values())


def test_logged_configs_carry_the_schema_version_and_read_back_equal():
    config = cfg.parse_config(MINIMAL)
    text = config.to_yaml()
    assert text.startswith(f"schema_version: {cfg.SCHEMA_VERSION}\n")
    logged = cfg.read_logged_config(text)
    assert logged.config == config and logged.schema_version == cfg.SCHEMA_VERSION and logged.unknown == {}


def test_version_1_configs_are_migrated_by_the_table():
    old = MINIMAL + ("training: {truncation: {mode: randomized, mean: 6}}\n"
                     "grid: {training.truncation: [full, {mode: randomized, mean: 3}]}\n")
    config = cfg.parse_config(old)  # no schema_version: written at version 1
    assert config.training.truncation.mode == "random_length" and config.training.truncation.label == "rand6"
    assert [c.training.truncation.label for _, c in cfg.expand_grid(config)] == ["full", "rand3"]
    raw, version = cfg.migrate({"schema_version": 1, "training": {"truncation": {"mode": "randomized", "mean": 2}}})
    assert version == 1 and raw == {"training": {"truncation": {"mode": "random_length", "mean": 2}}}
    assert set(cfg.MIGRATIONS) == set(range(1, cfg.SCHEMA_VERSION))  # one step per version


FORECAST = "task: {name: forecast, dataset: co2, window: 20}\n"


def test_version_2_ar_cell_types_become_model_kinds_and_run_the_same_models():
    old = (FORECAST + "schema_version: 2\nmodel: {cell_type: ar, ar_order: 4}\n"
           "grid: {model.cell_type: [ar_mlp, gru, ar, lstm]}\n")
    config = cfg.parse_config(old)
    assert config.model.kind == "ar" and config.model.cell_type is None and config.model.label == "ar"
    assert config.grid == {"model.kind": ["recurrent", "ar_mlp", "ar"], "model.cell_type": ["gru", "lstm"]}
    runs = cfg.expand_grid(config)  # 3 x 2 points, each AR model once: the four models the old grid named
    assert sorted(c.model.label for _, c in runs) == ["ar", "ar_mlp", "gru", "lstm"]
    assert [p for p, c in runs if c.model.kind == "ar"] == [{"model.kind": "ar"}]  # no cell in an AR point
    only_ar = cfg.parse_config(FORECAST + "schema_version: 2\ngrid: {model.cell_type: [ar, ar_mlp]}\n")
    assert only_ar.grid == {"model.kind": ["ar", "ar_mlp"]}
    recurrent = cfg.parse_config(FORECAST + "schema_version: 2\ngrid: {model.cell_type: [rnn, gru]}\n")
    assert recurrent.grid == {"model.cell_type": ["rnn", "gru"]}  # nothing to migrate
    assert cfg.parse_config(config.to_yaml()) == config  # written back at the current version, read back equal


def test_logged_params_of_older_runs_gain_the_model_kind_and_label():
    assert cfg.upgrade_params({"model.cell_type": "ar_mlp", "seed": "0"}) == {
        "model.cell_type": "", "model.kind": "ar_mlp", "model.label": "ar_mlp", "seed": "0"}
    assert cfg.upgrade_params({"model.cell_type": "gru"}) == {
        "model.cell_type": "gru", "model.kind": "recurrent", "model.label": "gru"}
    current = cfg.flatten_params(cfg.parse_config(FORECAST + "model: {kind: ar}\n"))
    assert current["model.kind"] == "ar" and current["model.cell_type"] == "" and current["model.label"] == "ar"
    assert cfg.upgrade_params(current) == current


def probed_steps(**training):
    config = cfg.TrainingConfig(**training)
    steps, last = [], 0
    for step in range(config.epochs * config.steps_per_epoch + 1):
        if config.probe_due(step, last):
            steps.append(step)
            last = step
    assert config.num_probes() == len(steps)  # what the dashboard's limits count
    return steps


def test_the_default_probe_schedule_probes_at_epoch_ends_500_batches_apart_and_after_the_last_epoch():
    assert cfg.TrainingConfig().probe_every == "auto" and cfg.AUTO_PROBE_SPACING == 500
    assert probed_steps(epochs=12, steps_per_epoch=50) == [0, 500, 600]  # the last epoch's end as well
    assert probed_steps(epochs=10, steps_per_epoch=50) == [0, 500]
    assert probed_steps(epochs=5, steps_per_epoch=300) == [0, 600, 1200, 1500]  # never mid-epoch
    assert probed_steps(epochs=3, steps_per_epoch=700) == [0, 700, 1400, 2100]  # long epochs: each one
    assert probed_steps(epochs=2, steps_per_epoch=4) == [0, 8]
    assert probed_steps(epochs=3, steps_per_epoch=4, probe_every="epoch") == [0, 4, 8, 12]
    assert probed_steps(epochs=3, steps_per_epoch=4, probe_every=5) == [0, 5, 10]
    assert probed_steps(epochs=3, steps_per_epoch=4, probe_every=0) == []


def test_probe_every_null_means_every_epoch_in_configs_and_runs_written_before_version_4():
    old = MINIMAL + "training: {probe_every: null}\ngrid: {training.probe_every: [null, 0, 50]}\n"
    config = cfg.parse_config(old)  # no schema_version: version 1
    assert config.training.probe_every == "epoch" and config.grid == {"training.probe_every": ["epoch", 0, 50]}
    assert cfg.parse_config(MINIMAL).training.probe_every == "auto"  # left out: today's default
    assert cfg.read_logged_config("schema_version: 3\n" + old).config.training.probe_every == "epoch"
    assert cfg.upgrade_params({"training.probe_every": ""}) == {"training.probe_every": "epoch"}
    assert cfg.upgrade_params({"training.probe_every": "auto"}) == {"training.probe_every": "auto"}
    current = f"schema_version: {cfg.SCHEMA_VERSION}\n" + MINIMAL
    assert "null meant `epoch` before schema version 4" in problems(current + "training: {probe_every: null}\n")
    for bad in ("true", "-1", "2.5", "weekly"):
        assert "training.probe_every: expected `auto`" in problems(MINIMAL + f"training: {{probe_every: {bad}}}\n")


def test_a_cell_type_of_ar_in_a_current_config_points_to_model_kind():
    text = f"schema_version: {cfg.SCHEMA_VERSION}\n" + FORECAST + "model: {cell_type: ar}\n"
    assert f"unknown cell; expected one of: {CELL_LIST} (an AR(τ) baseline is model.kind: ar or ar_mlp)" \
        in problems(text)
    assert "a recurrent model needs a cell" in problems(FORECAST + "model: {cell_type: null}\n")


def test_a_config_from_a_later_version_is_read_leniently_and_says_what_it_sets_aside():
    later = (f"schema_version: {cfg.SCHEMA_VERSION + 1}\nprecision: bfloat16\n" + MINIMAL
             + "model: {cell_type: gru, units: 8, bidirectional: true}\ntraining: {epochs: 3, warmup: 2}\n")
    logged = cfg.read_logged_config(later)
    assert logged.config.model.cell_type == "gru" and logged.config.training.epochs == 3
    assert logged.unknown == {"precision": "bfloat16", "model.bidirectional": True, "training.warmup": 2}
    with pytest.raises(ConfigError, match="newer than this version of the lab reads"):
        cfg.parse_config(later)  # to train, a config must be fully understood


def test_a_logged_config_of_an_unknown_task_says_so():
    with pytest.raises(ConfigError, match="unknown task; expected one of"):
        cfg.read_logged_config("task: {name: teleport, distance: 3}\n")


@pytest.mark.parametrize("label", ["full", "20", "5/10", "rand8", "unbiased2.5"])
def test_every_truncation_label_reads_back_as_its_truncation(label):
    assert cfg.Truncation.model_validate(cfg.truncation_from_label(label)).label == label
    assert cfg.Truncation.model_validate(label).label == label  # a YAML may write the label itself


def test_truncation_messages_name_random_length_tbptt_for_what_it_is():
    (problem,) = problems(MINIMAL + "training: {truncation: sometimes}\n").splitlines()
    assert "{mode: random_length, mean: ..} (random-length TBPTT)" in problem


def test_a_launch_says_how_many_runs_it_makes_and_why():
    stocks = cfg.load_config(EXPERIMENTS_DIR / "stocks.yaml")
    assert cfg.describe_grid(stocks) == ("16 runs: 2 model.kind × 3 model.cell_type × 2 task.transform × 2 seed "
                                            "(AR points once)")
    assert len(cfg.expand_grid(stocks)) == 16
    smoke = cfg.load_config(EXPERIMENTS_DIR / "smoke.yaml")
    assert cfg.describe_grid(smoke) == "6 runs: 3 model.cell_type × 2 training.truncation"
    assert cfg.describe_grid(cfg.validate({**smoke.model_dump(mode="json"), "grid": {}})) == "1 run"
