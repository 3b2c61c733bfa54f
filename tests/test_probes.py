"""Gate, cell and hidden-state traces computed with numpy from the weights a run logged."""

import keras
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from rnnlib import tasks, tracking
from rnnlib.analysis import probes
from rnnlib.core import cells
from rnnlib.core import config as cfg
from rnnlib.worker import models


@pytest.mark.parametrize("cell_type", ["rnn", "lstm", "gru"])
def test_traces_of_a_stacked_model_reproduce_its_keras_hidden_states(cell_type):
    config = cfg.parse_config(f"task: {{name: sine, window: 12}}\nmodel: {{cell_type: {cell_type}, units: 5, "
                              "num_layers: 2}\n")
    keras.utils.set_random_seed(3)
    model = models.build_model(config.model, tasks.build(config.task))
    x = np.random.default_rng(0).normal(size=(4, 12, 1)).astype(np.float32)
    traces = cells.model_traces(models.export_weights(model), cell_type, 2, x)
    top = keras.Model(model.inputs, model.get_layer(f"{cell_type}_1").output)
    np.testing.assert_allclose(traces[1]["h"], keras.ops.convert_to_numpy(top(x)), atol=1e-5)
    assert set(cells.get_cell(cell_type).gates) <= set(traces[0])


def test_tidy_traces_and_saturation_have_one_row_per_step_and_unit():
    rng = np.random.default_rng(0)
    weights = {"lstm_0/lstm_cell/kernel": rng.normal(size=(2, 12)),
               "lstm_0/lstm_cell/recurrent_kernel": rng.normal(size=(3, 12)),
               "lstm_0/lstm_cell/bias": np.r_[np.zeros(3), np.full(3, 20.0), np.zeros(6)]}  # forget gate ~1
    traces = cells.model_traces(weights, "lstm", 1, rng.normal(size=(2, 7, 2)))
    tidy = probes.tidy_traces(traces, sequence=1)
    assert len(tidy[tidy["quantity"] == "c"]) == 7 * 3
    assert set(tidy["quantity"]) == {"input_gate", "forget_gate", "candidate", "output_gate", "c", "h"}
    saturation = probes.gate_saturation(traces, "lstm")
    forget = saturation[saturation["gate"] == "forget_gate"]
    assert (forget["open"] == 1.0).all() and (forget["closed"] == 0.0).all()
    with pytest.raises(ValueError, match="No weights for layer gru_0; these weights hold: lstm_0"):
        cells.model_traces(weights, "gru", 1, rng.normal(size=(1, 2, 2)))


@pytest.mark.slow
def test_weights_logged_by_a_run_replay_its_model_without_keras(fixture_store, tmp_path):
    client = MlflowClient(fixture_store)
    runs = tracking.runs_frame(fixture_store, "smoke")
    run = runs[(runs["kind"] == "trial") & (runs["params.model.cell_type"] == "gru")].iloc[0]
    weights = tracking.load_weights(fixture_store, run["run_id"])
    path = client.download_artifacts(run["run_id"], "model/model.keras", str(tmp_path))
    model = keras.saving.load_model(path)
    config = cfg.parse_config(tracking.load_artifact_text(fixture_store, run["run_id"], "config.yaml"))
    x, _ = tasks.build(config.task).validation_data(3)
    traces = cells.model_traces(weights, "gru", config.model.num_layers, x)
    final = traces[config.model.num_layers - 1]["h"][:, -1]
    prediction = final @ weights["head/kernel"] + weights["head/bias"]
    np.testing.assert_allclose(prediction, keras.ops.convert_to_numpy(model(x)), atol=1e-5)


def test_memory_units_rank_a_unit_that_tracks_the_signal_first():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(8, 30)).cumsum(axis=1)
    h = rng.normal(size=(8, 30, 5))
    h[..., 3] = -0.5 * signal + 0.01 * rng.normal(size=(8, 30))
    ranking = probes.memory_units({"h": h}, signal)
    assert ranking["unit"].iloc[0] == 3 and ranking["correlation"].iloc[0] == pytest.approx(-1.0, abs=1e-3)
    assert probes.most_active_units({"h": h}, count=1) == [3]


def test_numpy_predictions_from_logged_weights_equal_the_keras_model():
    for task_config, cell_type in (({"name": "adding", "length": 12}, "gru"), ({"name": "copy_memory", "delay": 5},
                                                                            "lstm")):
        config = cfg.validate({"task": task_config, "model": {"cell_type": cell_type, "units": 4, "num_layers": 2}})
        task = tasks.build(config.task)
        keras.utils.set_random_seed(0)
        model = models.build_model(config.model, task)
        x, _ = probes.example_sequences(task, seed=1, num_sequences=3)
        traces = cells.model_traces(models.export_weights(model), cell_type, 2, x)
        expected = keras.ops.convert_to_numpy(model(x.astype(np.float32)))
        np.testing.assert_allclose(probes.predictions(models.export_weights(model), traces, task), expected,
                                   atol=1e-5)


def test_a_state_path_is_projected_on_the_principal_components_of_the_states_it_is_fitted_on():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    many = rng.normal(size=(20, 30, 8)) * np.array([5.0, 3.0, 1, 1, 1, 1, 1, 0.5])
    one = many[3]
    path, explained = probes.state_trajectory(one, fit_on=many)
    reference = PCA(n_components=2).fit(many.reshape(-1, 8))
    expected = reference.transform(one)
    signs = np.sign((path[["pc1", "pc2"]].to_numpy() * expected).sum(axis=0))
    assert np.allclose(path[["pc1", "pc2"]].to_numpy(), expected * signs, atol=1e-10)  # up to each axis' sign
    assert explained == pytest.approx(reference.explained_variance_ratio_, rel=1e-10)
    assert path["t"].tolist() == list(range(30)) and explained[0] > explained[1]


def test_the_marked_steps_of_the_adding_problem_are_where_its_memory_changes():
    task = tasks.build(cfg.validate({"name": "marks", "task": {"name": "adding", "length": 20}}).task)
    x, _ = probes.example_sequences(task, 3)
    marked = probes.memory_steps(task.memory_signal(x)[0])
    assert marked == np.flatnonzero(x[0, :, 1] == 1).tolist() and len(marked) == 2
    assert probes.memory_steps(None) == []
