"""The vec2seq (waveform) and encoder-decoder (dates) tasks: data, baselines, greedy decoding, training."""

import datetime
import math

import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.analysis import lessons
from rnnlib.core import config as cfg
from rnnlib.tasks.dates import EOS, FORMATS, GO, PAD
from rnnlib.worker import training

# ---- vec2seq: a waveform from one vector


def waveform(**params):
    return tasks.build(cfg.validate({"task": {"name": "waveform", **params}}).task)


def test_waveform_reads_its_vector_at_the_first_step_only_and_targets_the_sine_it_names():
    task = waveform(length=20, min_cycles=1, max_cycles=3)
    x, y = task.sample_batch(np.random.default_rng(0), 8)
    assert x.shape == (8, 20, 3) and y.shape == (8, 20, 1)
    assert np.all(x[:, 1:] == 0) and np.all(x[:, 0, 0] >= 1) and np.all(x[:, 0, 0] <= 3)
    cycles, phase, amplitude = x[0, 0]
    t = np.arange(20)
    np.testing.assert_allclose(y[0, :, 0], amplitude * np.sin(2 * np.pi * (cycles * t / 20 + phase)), atol=1e-5)
    assert task.io_form == "vec2seq"


def test_waveform_baseline_is_the_mse_of_silence_which_no_source_blind_constant_beats():
    task = waveform(length=30, min_amplitude=0.5, max_amplitude=1.5)
    assert task.baseline == pytest.approx((0.25 + 0.75 + 2.25) / 6)
    _, y = task.validation_data(4000)
    assert task.loss_value(y, np.zeros_like(y)) == pytest.approx(task.baseline, rel=0.03)
    per_step_mean = y.mean(axis=0, keepdims=True)  # the best a model blind to the vector can do, step by step
    assert task.loss_value(y, np.broadcast_to(per_step_mean, y.shape)) == pytest.approx(task.baseline, rel=0.03)
    assert task.metric_baselines["silence (y = 0)"]["rmse"] == pytest.approx(math.sqrt(task.baseline))


@pytest.mark.parametrize(("params", "message"), [
    ({"min_cycles": 4, "max_cycles": 2}, "task.min_cycles (4) is above task.max_cycles (2); swap them"),
    ({"length": 10, "max_cycles": 6}, "above the Nyquist limit of a 10-step sequence (5 cycles)"),
])
def test_impossible_waveforms_are_refused_with_the_fix(params, message):
    with pytest.raises(cfg.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.validate({"task": {"name": "waveform", **params}})


# ---- encoder-decoder: dates to ISO 8601


def dates(**params):
    return tasks.build(cfg.validate({"task": {"name": "dates", **params}}).task)


@pytest.mark.parametrize(("name", "text"), [
    ("long", "March 5, 2024"), ("long_day_first", "5 March 2024"), ("short", "Mar 5, 2024"),
    ("short_day_first", "5 Mar 2024"), ("weekday", "Tuesday, March 5, 2024"), ("ordinal", "5th of March 2024"),
    ("us_numeric", "3/5/2024"), ("dotted", "05.03.2024"), ("oracle", "05-MAR-2024"), ("compact", "20240305"),
])
def test_every_format_writes_the_date_the_way_people_do(name, text):
    assert FORMATS[name](datetime.date(2024, 3, 5)) == text


@pytest.mark.parametrize(("day", "ordinal"), [(1, "1st"), (2, "2nd"), (3, "3rd"), (11, "11th"), (12, "12th"),
                                              (13, "13th"), (21, "21st"), (22, "22nd"), (23, "23rd"), (31, "31st")])
def test_ordinals_follow_english(day, ordinal):
    assert FORMATS["ordinal"](datetime.date(2024, 1, day)).startswith(f"{ordinal} of")


def test_dates_layout_left_pads_the_source_then_go_then_the_teacher_forced_answer():
    task = dates()
    source_length = task.params.source_length
    assert source_length == len("Wednesday, September 28, 2049")  # the longest source there is
    x, y = task.sample_batch(np.random.default_rng(1), 16)
    assert x.shape == (16, source_length + 11, len(task.alphabet)) and y.shape == (16, source_length + 11, 1)
    ids = np.argmax(x, axis=-1)
    for row, (source, answer) in enumerate(zip(task.sources(x), task.answers(y[:, :, 0]))):
        date = datetime.date.fromisoformat(answer)  # every answer is a real ISO date ...
        assert source in {f(date) for f in FORMATS.values()}  # ... that the source writes in some format
        text = "".join(task.alphabet[i] for i in ids[row])
        assert text == PAD * (source_length - len(source)) + source + GO + answer  # inputs: answer shifted by one
        assert "".join(task.alphabet[i] for i in y[row, source_length:, 0]) == answer + EOS
        assert np.all(y[row, :source_length] == 0)  # nothing to predict while reading (and not scored)
    assert task.unscored_steps == source_length


def test_reversed_sources_are_read_backwards_and_shown_forwards():
    forward, backward = dates(), dates(reverse_source=True)
    x_forward, _ = forward.validation_data(4)
    x_backward, _ = backward.validation_data(4)
    assert forward.sources(x_forward) == backward.sources(x_backward)
    first = forward.sources(x_forward)[0]
    ids = np.argmax(x_backward[0, : backward.params.source_length], axis=-1)
    assert "".join(backward.alphabet[i] for i in ids).lstrip(PAD) == first[::-1]


def test_validation_dates_are_never_trained_on_and_the_baseline_is_the_calendars_entropy():
    task = dates(first_year=2000, last_year=2003)
    days = (datetime.date(2003, 12, 31) - datetime.date(2000, 1, 1)).days + 1
    assert task.baseline == pytest.approx(math.log(days) / 11)
    assert task.metric_baselines["ignore the source"]["exact_match"] == pytest.approx(1 / days)
    rng = np.random.default_rng(0)
    trained = {a for _ in range(40) for a in task.answers(task.sample_batch(rng, 64)[1][:, :, 0])}
    held_out = set(task.answers(task.validation_data(256)[1][:, :, 0]))
    assert held_out and not trained & held_out
    assert len(held_out) > 100  # spread over the calendar, not one date repeated


def test_impossible_date_settings_are_refused_with_the_fix():
    with pytest.raises(cfg.ConfigError, match="task.first_year \\(2050\\) is after task.last_year \\(2000\\)"):
        cfg.validate({"task": {"name": "dates", "first_year": 2050, "last_year": 2000}})
    with pytest.raises(cfg.ConfigError, match="task.formats is empty"):
        cfg.validate({"task": {"name": "dates", "formats": []}})
    with pytest.raises(cfg.ConfigError, match="task dates is encoder_decoder"):
        cfg.validate({"task": {"name": "dates"}, "model": {"kind": "ar", "ar_order": 3}})


def oracle(task, y, wrong=()):
    """A 'model' that outputs the target character at every step, whatever it reads, except at `wrong`
    (sequence, answer step) positions, where it says PAD."""
    def predict(inputs):
        ids = np.array(y[:, :, 0])
        for row, step in wrong:
            ids[row, task.params.source_length + step] = 0
        return np.eye(task.num_outputs, dtype=np.float32)[ids]
    return predict


def test_exact_match_needs_every_character_and_the_end_while_char_accuracy_counts_them():
    task = dates()
    x, y = task.validation_data(4)
    perfect = task.generate(oracle(task, y), x)
    scores = {name: float(np.mean(metric.per_step(y, perfect)[:, -1])) for name, metric in task.metrics.items()}
    assert scores == {"exact_match": 1.0, "char_accuracy": 1.0}
    flawed = task.generate(oracle(task, y, wrong=[(0, 3), (2, 10)]), x)  # sequence 2 misses only its <eos>
    assert np.mean(task.metrics["exact_match"].per_step(y, flawed)[:, -1]) == 0.5
    assert np.mean(task.metrics["char_accuracy"].per_step(y, flawed)[:, -1]) == pytest.approx(1 - 2 / 44)
    assert task.answers(np.argmax(flawed, axis=-1))[2].endswith("…")  # no end: shown as cut off


def tiny_fixed_decoder(task):
    """A real Keras SimpleRNN whose weights make it say, at every step, the character after the one it reads
    (alphabet order, cyclic): no memory, so greedy decoding from ▶ must walk the alphabet from ■ on."""
    from rnnlib.worker import models

    run = cfg.validate({"task": {"name": "dates", "formats": ["compact"]},
                        "model": {"cell_type": "rnn", "units": task.num_features}})
    model = models.build_model(run.model, task)
    size = task.num_features
    shift = np.roll(np.eye(size, dtype=np.float32), 1, axis=1)  # one-hot i -> one-hot i + 1
    model.set_weights([5.0 * shift, np.zeros((size, size), np.float32), np.zeros(size, np.float32),
                       10.0 * np.eye(size, dtype=np.float32), np.zeros(size, np.float32)])
    return model


def test_greedy_decoding_on_a_tiny_fixed_model_feeds_back_its_own_choices_never_the_target():
    task = dates(formats=["compact"])
    model = tiny_fixed_decoder(task)
    x, y = task.validation_data(8)
    start = task.params.source_length
    teacher_forced = np.argmax(model.predict_on_batch(x), axis=-1)
    read = np.argmax(x, -1)[:, start + 1 :]
    np.testing.assert_array_equal(teacher_forced[:, start + 1 :], (read + 1) % task.num_features)
    generated = task.generate(training._batched_predict(model), x)
    decoded = np.argmax(generated, axis=-1)[:, start:]
    go = task.alphabet.index(GO)
    np.testing.assert_array_equal(decoded, np.tile(np.arange(go + 1, go + 12), (8, 1)))  # ■, ' ', ',', ...
    assert task.answers(np.argmax(generated, axis=-1)) == [""] * 8  # it says <eos> first: an empty answer
    loss, metrics = training.evaluate(model, task, x, y, batch_size=8, warmup=start)
    # scored on its own decoding (where the chain meets a target character by chance), not teacher-forced
    assert metrics["exact_match"] == 0.0
    assert metrics["char_accuracy"] == pytest.approx(np.mean(decoded == y[:, start:, 0]))
    assert metrics["char_accuracy"] != pytest.approx(np.mean(teacher_forced[:, start:] == y[:, start:, 0]))
    assert loss == pytest.approx(task.loss_value(y[:, start:], model.predict_on_batch(x)[:, start:]), rel=1e-5)


def test_one_epoch_of_dates_trains_only_on_windows_that_reach_the_answer():
    run = cfg.validate({"task": {"name": "dates", "formats": ["compact", "us_numeric"]},
                        "model": {"cell_type": "gru", "units": 8},
                        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "truncation": 5,
                                     "num_validation_sequences": 16, "probe_every": 0}})
    task = tasks.build(run.task)
    length, start = task.sequence_length, task.params.source_length
    scored_windows = sum(1 for stop in [*range(5, length, 5), length] if stop > start)
    (logs,) = training.train(run).history
    assert logs["updates"] == 2 * scored_windows < 2 * math.ceil(length / 5)
    assert 0.0 <= logs["val_exact_match"] <= logs["val_char_accuracy"] <= 1.0
    assert logs["val_loss"] < 2 * math.log(task.num_outputs)


def test_one_epoch_of_waveform_logs_rmse_in_the_waves_units():
    run = cfg.validate({"task": {"name": "waveform", "length": 12},
                        "model": {"cell_type": "lstm", "units": 4},
                        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8,
                                     "num_validation_sequences": 16, "probe_every": 0}})
    (logs,) = training.train(run).history
    assert logs["val_rmse"] == pytest.approx(math.sqrt(logs["val_loss"]), rel=1e-4)


def test_every_sequence_form_has_a_bundled_task():
    assert all(lessons.tasks_by_form().values())
    assert "waveform" in lessons.tasks_by_form()["vec2seq"] and "dates" in lessons.tasks_by_form()["encoder_decoder"]
