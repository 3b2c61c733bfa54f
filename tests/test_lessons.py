"""The "how RNNs learn" pages: rnnlib.analysis.lessons numbers, rnnlib.viz.diagrams figures, and the pages under
AppTest."""

import base64
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from conftest import PROJECT_DIR
from rnnlib import tasks
from rnnlib.analysis import lessons
from rnnlib.core import config, truncation
from rnnlib.viz import diagrams


def reach_for(length, short_form, step=None, seed=0):
    updates = lessons.truncation_updates(length, config.Truncation.model_validate(short_form), seed)
    return lessons.unrolled_gradient_reach(length, updates, length - 1 if step is None else step)


# --- Vanishing and exploding products --------------------------------------------------------------------------


@pytest.mark.parametrize(("activation", "factor"), [("tanh", 1.3), ("sigmoid", 0.25 * 1.3)])
def test_bound_is_max_derivative_times_radius_to_the_lag(activation, factor):
    bound = lessons.derivative_bound_curve(1.3, lessons.ACTIVATION_DERIVATIVE_BOUNDS[activation], 12)
    assert bound["lag"].tolist() == list(range(13))
    np.testing.assert_allclose(bound["bound"], factor ** np.arange(13))


def test_derivative_bounds_are_the_maxima_of_the_derivatives():
    a = np.linspace(-6, 6, 2001)
    for name, derivative in lessons.ACTIVATION_DERIVATIVES.items():
        assert derivative(a).max() == pytest.approx(lessons.ACTIVATION_DERIVATIVE_BOUNDS[name])


def test_products_vanish_below_radius_one():
    norms = lessons.jacobian_product_norms(0.5, "tanh", units=16, max_lag=30, rng=0)
    assert (np.diff(norms["median"]) < 0).all()
    assert norms["upper"].iloc[-1] < 1e-8


def test_products_grow_above_radius_one_with_tanh_and_small_inputs():
    norms = lessons.jacobian_product_norms(1.5, "tanh", units=16, max_lag=30, rng=0, input_scale=0.01)
    assert norms["lower"].iloc[10] > 2.0
    assert norms["median"].iloc[-1] < 1.5**30 / 100  # saturation: far below the bound


@pytest.mark.parametrize("radius", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_measured_products_never_exceed_the_bound(radius, activation):
    norms = lessons.jacobian_product_norms(radius, activation, units=8, max_lag=40, rng=1, input_scale=0.01)
    bound = lessons.derivative_bound_curve(radius, lessons.ACTIVATION_DERIVATIVE_BOUNDS[activation], 40)
    assert (norms["upper"] <= bound["bound"] * (1 + 1e-9)).all()


def test_sigmoid_products_vanish_faster_than_tanh():
    tanh = lessons.jacobian_product_norms(1.0, "tanh", units=8, max_lag=10, rng=0)
    sigmoid = lessons.jacobian_product_norms(1.0, "sigmoid", units=8, max_lag=10, rng=0)
    assert sigmoid["median"].iloc[-1] < tanh["median"].iloc[-1] * 0.25**9


def test_products_are_reproducible_for_a_seed_and_reject_unknown_activations():
    first, second = (lessons.jacobian_product_norms(1.2, "tanh", 8, 10, rng=3) for _ in range(2))
    pd.testing.assert_frame_equal(first, second)
    with pytest.raises(ValueError, match="expected one of: tanh, sigmoid"):
        lessons.jacobian_product_norms(1.0, "relu", 8, 10, rng=0)


# --- Unrolled BPTT ---------------------------------------------------------------------------------------------


def test_full_bptt_reaches_the_first_step():
    reach = reach_for(20, "full")
    assert reach["reached"].all() and lessons.reach_summary(reach)["reach"] == 0


def test_tbptt_k_reaches_exactly_k_steps_back_from_the_last_step():
    summary = lessons.reach_summary(reach_for(30, 10))
    assert (summary["reach"], summary["num_reached"], summary["num_updates"]) == (20, 10, 3)


def test_k2_longer_than_k1_reaches_k2_back_and_overlaps_updates():
    reach = reach_for(30, {"k1": 5, "k2": 10})
    assert lessons.reach_summary(reach)["reach"] == 30 - 10
    first_of_last_update = reach_for(30, {"k1": 5, "k2": 10}, step=25)
    assert first_of_last_update["reached"].sum() == 10 - 5 + 1
    assert reach["in_followed_update"].sum() == 10 and reach["scored_with_step"].sum() == 5


def test_random_length_reach_follows_the_truncation_schedule_of_the_same_seed():
    trunc = config.Truncation.model_validate({"mode": "random_length", "mean": 6})
    updates = truncation.schedule(40, trunc, np.random.default_rng(7))
    assert lessons.truncation_updates(40, trunc, seed=7) == updates
    assert lessons.truncation_updates(40, trunc, seed=8) != updates
    for step in range(40):
        reach = lessons.unrolled_gradient_reach(40, updates, step)
        assert reach.loc[reach["reached"], "t"].min() == truncation.gradient_reach(updates, step)


def test_every_step_is_scored_by_exactly_one_update():
    updates = lessons.truncation_updates(37, config.Truncation.model_validate({"k1": 4, "k2": 9}))
    table = lessons.updates_table(updates)
    assert table["scored_steps"].sum() == 37 and table["backprop_steps"].max() == 9
    assert lessons.unrolled_gradient_reach(37, updates, 0)["update"].tolist() == np.repeat(range(10), 4)[:37].tolist()


def test_reach_rejects_a_step_outside_the_sequence():
    with pytest.raises(ValueError, match=r"in \[0, 9\], got 10"):
        lessons.unrolled_gradient_reach(10, lessons.truncation_updates(10, config.Truncation()), 10)


def test_make_truncation_explains_k1_longer_than_k2():
    assert lessons.make_truncation("tbptt", k1=3, k2=6).label == "3/6"
    with pytest.raises(ValueError, match=r"^k1 \(6\) must not exceed k2 \(3\)"):
        lessons.make_truncation("tbptt", k1=6, k2=3)


# --- Sequence forms --------------------------------------------------------------------------------------------


def test_tasks_by_form_lists_adding_under_seq2vec_and_every_task_once():
    by_form = lessons.tasks_by_form()
    assert list(by_form) == list(tasks.IO_FORMS) == list(lessons.IO_FORM_INFO)
    assert "adding" in by_form["seq2vec"] and "sine" in by_form["seq2seq"]
    listed = [name for names in by_form.values() for name in names]
    assert sorted(listed) == sorted(tasks.TASKS)


# --- Figures ---------------------------------------------------------------------------------------------------


def traces(fig):
    return {trace.name: trace for trace in fig.data}


def test_unrolled_figure_highlights_exactly_the_reached_states():
    reach = reach_for(30, {"k1": 5, "k2": 10}, step=27)
    fig = traces(diagrams.unrolled_bptt_figure(reach))
    assert list(fig["h_t: receives gradient"].x) == list(range(20, 28))
    assert len(fig["h_t: no gradient from this loss"].x) == 22
    assert list(fig["followed loss L_27"].x) == [27]
    assert len(fig["loss in the same update"].x) == 4  # 25..29 but the followed one


def test_unrolled_figure_draws_each_update_span_and_each_cut():
    reach = reach_for(30, {"k1": 5, "k2": 10})
    fig = diagrams.unrolled_bptt_figure(reach)
    assert len(fig.layout.shapes) == 2 * 6  # an unrolled and a scored band per update
    assert list(traces(fig)["gradient stopped (state carried)"].x) == [4.5, 9.5, 14.5, 19.5]
    assert "back to t=20" in fig.layout.title.text
    json.loads(fig.to_json())


def test_products_figure_draws_bounds_dashed_measured_bands_runs_and_the_line_at_one():
    bounds = {"tanh": lessons.derivative_bound_curve(1.2, 1.0, 20)}
    measured = {"tanh": lessons.jacobian_product_norms(1.2, "tanh", 8, 20, rng=0)}
    runs = pd.DataFrame({"label": ["rnn", "rnn", "lstm", "lstm"], "lag": [0, 1, 0, 1], "value": [1, 0.5, 1, 0.9]})
    fig = diagrams.products_figure(bounds, measured, runs)
    names = traces(fig)
    assert names["tanh bound"].line.dash == "dash"
    assert names["tanh measured band"].fill == "toself"
    assert names["tanh bound"].line.color == names["tanh measured (median)"].line.color
    assert {"run: rnn", "run: lstm"} <= set(names)
    assert fig.layout.yaxis.type == "log" and fig.layout.shapes[0].y0 == 1
    assert len(diagrams.products_figure(bounds, measured).data) == 3


@pytest.mark.parametrize(("form", "inputs", "outputs"),
                         [("seq2seq", 4, 4), ("seq2vec", 4, 1), ("vec2seq", 1, 4), ("encoder_decoder", 3, 4)])
def test_io_form_figure_has_the_inputs_and_outputs_of_its_form(form, inputs, outputs):
    names = [shape.name for shape in diagrams.io_form_figure(form).layout.shapes]
    assert sum(name.startswith("input") for name in names) == inputs
    assert sum(name.startswith("output") for name in names) == outputs
    assert ("context c" in names) == (form == "encoder_decoder")


def test_lessons_and_diagrams_do_not_import_keras_or_tensorflow():
    code = ("import sys, rnnlib.analysis.lessons, rnnlib.viz.diagrams; "
            "print(','.join(m for m in ('keras', 'tensorflow', 'jax', 'torch', 'streamlit') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


# --- Pages -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def empty_store(monkeypatch, tmp_path):
    """Pages that overlay real runs read an empty store unless a test points them at one."""
    import streamlit as st

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    st.cache_data.clear()


def open_page(name):
    at = AppTest.from_file(str(PROJECT_DIR / "app_pages" / f"{name}.py"), default_timeout=30)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figure(at, index=0):
    return json.loads(at.get("plotly_chart")[index].proto.spec)


def trace_values(at, name, axis):
    """A trace's x or y from the chart's JSON, where plotly writes numeric arrays as base64 typed arrays."""
    values = next(t for t in figure(at)["data"] if t["name"] == name)[axis]
    if isinstance(values, dict):
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return values


def highlighted_states(at):
    return len(trace_values(at, "h_t: receives gradient", "x"))


def test_unrolled_page_highlights_fewer_states_for_shorter_truncation():
    at = open_page("unrolled")
    assert highlighted_states(at) == 24  # full BPTT over the default T = 24
    at.radio(key="unrolled_mode").set_value("tbptt").run()
    assert highlighted_states(at) == 8  # k2 = 8
    at.slider(key="unrolled_k1").set_value(3).run()
    at.slider(key="unrolled_k2").set_value(3).run()
    assert highlighted_states(at) == 3
    assert at.metric[1].value == "t=21"


def test_unrolled_page_names_random_length_tbptt_a_biased_estimate():
    at = open_page("unrolled")
    at.radio(key="unrolled_mode").set_value("random_length").run()
    text = " ".join(m.value for m in at.markdown)
    assert at.radio(key="unrolled_mode").format_func("random_length") == "Random-length TBPTT"
    assert "still a biased estimate of the full gradient" in text and "this mode does not" in text


def test_unrolled_page_draws_the_unbiased_modes_compensation_factors_on_the_reached_states():
    at = open_page("unrolled")
    at.radio(key="unrolled_mode").set_value("unbiased").run()
    at.slider(key="unrolled_mean_unbiased").set_value(4.0).run()
    trunc = config.Truncation.model_validate({"mode": "unbiased", "mean": 4.0})
    seed = next(s for s in range(100) if lessons.truncation_updates(24, trunc, s)[-1].start <= 20)  # a long last chunk
    at.number_input(key="unrolled_seed").set_value(seed).run()
    assert not at.exception
    reached = trace_values(at, "h_t: receives gradient", "x")
    factors = dict(zip(trace_values(at, "gradient × factor", "x"), trace_values(at, "gradient × factor", "text")))
    step = max(reached)
    assert set(factors) == set(reached) - {step}  # every reached state but the followed one is scaled
    farthest = min(reached)
    assert factors[farthest] == f"×{(4 / 3) ** (step - farthest):.2g}"  # 1 / (1 - 1/4) per step back
    text = " ".join(m.value for m in at.markdown)
    assert "expected gradient is full BPTT's" in text


def test_unrolled_page_explains_k1_longer_than_k2_instead_of_failing():
    at = open_page("unrolled")
    at.radio(key="unrolled_mode").set_value("tbptt").run()
    at.slider(key="unrolled_k1").set_value(12).run()
    assert not at.exception and not at.get("plotly_chart")
    assert "k1 (12) must not exceed k2 (8)" in at.error[0].value


def test_unrolled_page_keeps_following_the_last_loss_when_t_changes():
    at = open_page("unrolled")
    at.slider(key="unrolled_length").set_value(40).run()
    assert at.slider(key="unrolled_step").value == 39
    at.slider(key="unrolled_step").set_value(10).run()
    at.slider(key="unrolled_length").set_value(30).run()
    assert at.slider(key="unrolled_step").value == 10 and highlighted_states(at) == 11


def test_products_page_draws_bound_and_measured_and_follows_the_radius():
    at = open_page("products")
    names = {t["name"] for t in figure(at)["data"]}
    assert {"tanh bound", "tanh measured (median)", "sigmoid bound", "sigmoid measured (median)"} <= names
    assert trace_values(at, "tanh bound", "y")[10] == pytest.approx(1.0)  # default radius 1
    at.slider(key="products_radius").set_value(0.5).run()
    assert trace_values(at, "tanh bound", "y")[10] == pytest.approx(0.5**10)


def test_forms_page_pictures_every_form_and_is_honest_about_missing_tasks():
    at = open_page("forms")
    assert len(at.get("plotly_chart")) == 4
    assert any("adding" in m.value for m in at.markdown)
    missing = [c.value for c in at.caption if c.value.startswith("No bundled task yet")]
    assert len(missing) == sum(not names for names in lessons.tasks_by_form().values())


def test_products_page_overlays_the_measured_jacobians_of_logged_runs(fixture_store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fixture_store)
    at = open_page("products")
    names = {t["name"] for t in figure(at)["data"]}
    assert {"run: gru (initialisation)", "run: lstm (initialisation)", "run: rnn (initialisation)"} <= names
    assert trace_values(at, "run: rnn (initialisation)", "y")[0] == pytest.approx(1.0)  # ∂h_T/∂h_T = I
    at.radio(key="products_moment").set_value("after training").run()
    assert "run: rnn (after training)" in {t["name"] for t in figure(at)["data"]}
