import math

import numpy as np
import pytest

from rnnlib import tasks
from rnnlib.core import config as cfg
from rnnlib.tasks.text import corpus


def build(name, **params):
    return tasks.build(tasks.get(name).params_type(name=name, **params))


def test_unknown_task_lists_the_registered_ones():
    with pytest.raises(ValueError, match="expected one of: adding, copy_memory, sine, sunspots"):
        tasks.get("adder")


@pytest.mark.parametrize(
    ("name", "params", "x_shape", "y_shape", "y_dtype"),
    [
        ("adding", {"length": 30}, (4, 30, 2), (4, 1), np.float32),
        ("copy_memory", {"delay": 7}, (4, 27, 10), (4, 27, 1), np.int32),
        ("sine", {"window": 16}, (4, 16, 1), (4, 16, 1), np.float32),
        ("sunspots", {"window": 12}, (4, 12, 1), (4, 12, 1), np.float32),
        ("digits", {"read": "rows"}, (4, 8, 8), (4, 1), np.int32),
        ("digits", {"read": "pixels", "permuted": True}, (4, 64, 1), (4, 1), np.int32),
        ("text", {"length": 30}, (4, 30, len(corpus()[1])), (4, 30, 1), np.int32),
    ],
)
def test_batches_have_the_documented_shapes(name, params, x_shape, y_shape, y_dtype):
    task = build(name, **params)
    x, y = task.sample_batch(np.random.default_rng(0), 4)
    assert x.shape == x_shape and x.dtype == np.float32
    assert y.shape == y_shape and y.dtype == y_dtype
    assert x.shape[1] == task.sequence_length and x.shape[2] == task.num_features
    x_val, y_val = task.validation_data(5)
    assert x_val.shape[0] == y_val.shape[0] == 5


def test_batches_are_reproducible_from_the_seed_and_validation_is_fixed():
    task = build("adding", length=20)
    a, _ = task.sample_batch(np.random.default_rng(3), 8)
    b, _ = task.sample_batch(np.random.default_rng(3), 8)
    c, _ = task.sample_batch(np.random.default_rng(4), 8)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(task.validation_data(8)[0], task.validation_data(8)[0])


def test_adding_marks_one_value_in_each_half_and_sums_them():
    task = build("adding", length=40)
    x, y = task.sample_batch(np.random.default_rng(0), 256)
    mask = x[..., 1]
    assert np.all(mask[:, :20].sum(axis=1) == 1) and np.all(mask[:, 20:].sum(axis=1) == 1)
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * mask).sum(axis=1), rtol=1e-6)


def test_adding_baseline_is_the_mse_of_always_predicting_one():
    task = build("adding", length=50)
    assert task.baseline == pytest.approx(1 / 6)
    _, y = task.sample_batch(np.random.default_rng(0), 200_000)
    assert task.loss_value(y, np.ones_like(y)) == pytest.approx(1 / 6, rel=0.01)


def test_copy_memory_layout_and_memoryless_baseline():
    delay = 15
    task = build("copy_memory", delay=delay)
    x, y = task.sample_batch(np.random.default_rng(0), 64)
    ids = np.asarray(x).argmax(axis=-1)
    assert np.array_equal(x[:, 3:5], np.asarray(x)[:, 3:5]) and np.array_equal(x[2:4, :7], np.asarray(x)[2:4, :7])
    length = delay + 20
    assert np.all((ids[:, :10] >= 1) & (ids[:, :10] <= 8))
    assert np.all(ids[:, 10 : length - 11] == 0)
    assert np.all(ids[:, length - 11] == 9) and np.all(ids[:, length - 10 :] == 0)
    assert np.array_equal(y[:, -10:, 0], ids[:, :10]) and np.all(y[:, :-10] == 0)
    # The memoryless strategy: certain blank for T+10 steps, uniform over the 8 symbols for the last 10.
    probs = np.zeros((64, length, 10))
    probs[:, :-10, 0] = 1.0
    probs[:, -10:, 1:9] = 1 / 8
    expected = 10 * math.log(8) / (delay + 20)
    assert task.baseline == pytest.approx(expected)
    assert task.loss_value(y, probs) == pytest.approx(expected, rel=1e-6)
    # argmax of the uniform guess is symbol 1: right exactly where the symbol to recall is 1 (about 1/8)
    assert task.metric_value(y, probs) == pytest.approx(np.mean(y[:, -10:] == 1))
    perfect = np.eye(10)[y[..., 0]]
    assert task.metric_value(y, perfect) == 1.0 and task.loss_value(y, perfect) < 1e-6


def test_synthetic_batches_of_very_long_sequences_are_generated_without_a_dataset():
    task = build("adding", length=100_000)
    x, y = task.sample_batch(np.random.default_rng(0), 2)
    assert x.shape == (2, 100_000, 2) and y.shape == (2, 1)


def test_sine_is_d2l_series_and_targets_are_the_next_values():
    task = build("sine", window=8, noise=0.0)
    series = task.raw_series()
    np.testing.assert_allclose(series[:3], np.sin(0.01 * np.arange(1, 4)))
    x, y = task.sample_batch(np.random.default_rng(0), 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])


def test_series_baseline_is_persistence_on_the_validation_windows():
    task = build("sine", window=16)
    x, y = task.validation_data(task.validation_size(256))
    assert len(x) == 1000 - 600 - 16  # every window of the held-out part, one per start
    assert task.baseline == pytest.approx(float(np.mean((y - x) ** 2)))
    # Noise N(0, 0.2^2) on both ends of a one-step difference: about 2 * 0.04.
    assert 0.06 < task.baseline < 0.1


def test_sunspots_is_the_bundled_series_split_by_time():
    task = build("sunspots", window=10, train_fraction=0.7)
    assert len(task.raw_series()) == 309
    assert task.num_train_points == 216
    x_val, _ = task.validation_data(4)
    train_values = set(np.round(task._scaled[0][:216], 6))
    assert not set(np.round(x_val[0, :, 0], 6)) <= train_values
    assert task.metric_value(np.zeros((1, 3, 1)), np.ones((1, 3, 1))) == pytest.approx(task.scale)


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_a_sequence_round_trips_through_its_editable_table(name):
    task = tasks.build(cfg.validate({"task": {"name": name}}).task)
    x, _ = task.sample_batch(np.random.default_rng(0), 1)
    x = np.asarray(x)[0]
    table = task.to_table(x)
    assert len(table) == task.sequence_length
    np.testing.assert_array_equal(task.from_table(table), x)


def test_edited_tables_with_holes_or_bad_symbols_are_refused_with_what_to_fix():
    adding = tasks.build(cfg.validate({"task": {"name": "adding", "length": 5}}).task)
    table = adding.to_table(np.zeros((5, 2)))
    table.loc[2, "mask"] = None
    with pytest.raises(ValueError, match="Every step needs a number"):
        adding.from_table(table)
    with pytest.raises(ValueError, match="missing: mask"):
        adding.from_table(table.drop(columns="mask"))
    copy = tasks.build(cfg.validate({"task": {"name": "copy_memory", "delay": 3}}).task)
    symbols = copy.to_table(np.eye(10)[np.zeros(23, int)])
    symbols.loc[0, "symbol"] = 12
    with pytest.raises(ValueError, match="whole number from 0 to 9"):
        copy.from_table(symbols)


def test_adding_memory_signal_is_the_running_sum_of_marked_values():
    task = tasks.build(cfg.validate({"task": {"name": "adding", "length": 20}}).task)
    x, y = task.sample_batch(np.random.default_rng(3), 4)
    signal = task.memory_signal(x)
    np.testing.assert_allclose(signal[:, -1], y[:, 0], rtol=1e-6)
    assert np.all(np.diff(signal, axis=1) >= 0) and len(np.unique(signal[0])) == 3  # 0, first value, the sum


def test_digits_are_sklearns_images_read_by_row_or_pixel_with_one_fixed_permutation():
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows, pixels, permuted = (build("digits", read=r, permuted=p) for r, p in
                              (("rows", False), ("pixels", False), ("pixels", True)))
    x_rows, y = rows.validation_data(8)
    x_pixels, _ = pixels.validation_data(8)
    x_permuted, _ = permuted.validation_data(8)
    index = next(i for i in range(len(digits.target)) if np.array_equal(digits.images[i] / 16.0, x_rows[0]))
    assert digits.target[index] == y[0, 0]
    np.testing.assert_array_equal(x_pixels[:, :, 0], x_rows.reshape(8, 64))  # row-major pixel order
    assert not np.array_equal(x_permuted, x_pixels)
    np.testing.assert_array_equal(np.sort(x_permuted[:, :, 0], axis=1), np.sort(x_pixels[:, :, 0], axis=1))
    again, _ = build("digits", read="pixels", permuted=True).validation_data(8)
    np.testing.assert_array_equal(again, x_permuted)  # the same permutation for every run


def test_digits_train_and_validation_digits_do_not_overlap_and_baseline_is_the_prior_entropy():
    task = build("digits")
    train, validation = task._split
    assert not set(train) & set(validation) and len(train) + len(validation) == 1797
    assert len(validation) == 359  # 20%
    assert task.baseline == pytest.approx(math.log(10), abs=0.02)
    y_pred = np.full((4, 10), 0.1)
    assert task.metric_value(np.array([[1], [2], [3], [4]]), np.eye(10)[[1, 2, 0, 0]]) == 0.5
    assert task.loss_value(np.array([[1], [2], [3], [4]]), y_pred) == pytest.approx(math.log(10))


def test_answers_read_as_values_or_classes():
    assert build("adding").format_answer(np.array([0.81234])) == "0.812"
    digits = build("digits")
    assert digits.format_answer(np.eye(10)[7] * 0.9 + 0.01) == "7 (p = 0.91)"
    assert digits.format_target(np.array([7])) == "7"


def test_text_targets_are_the_next_characters_of_pythons_help_text():
    from pydoc_data import topics

    task = build("text", length=40)
    ids, alphabet = corpus()
    assert len(ids) > 400_000 and " " in alphabet and "\n" in alphabet
    x, y = task.sample_batch(np.random.default_rng(1), 2)
    inputs = "".join(alphabet[i] for i in np.argmax(np.asarray(x)[0], axis=-1))
    targets = "".join(alphabet[i] for i in y[0, :, 0])
    assert inputs[1:] == targets[:-1]
    assert any(inputs + targets[-1] in text for text in topics.topics.values())
    x_val, _ = task.validation_data(4)
    first = "".join(alphabet[i] for i in np.argmax(np.asarray(x_val)[0], axis=-1))
    assert "".join(alphabet[i] for i in ids[task.num_train_chars : task.num_train_chars + 40]) == first


def test_text_baseline_is_the_unigram_entropy_in_nats_and_metric_is_in_bits():
    task = build("text")
    assert 4.0 < task.baseline / math.log(2) < 5.5  # English characters: ~4.1-4.7 bits under a unigram model
    y = np.zeros((1, 3, 1), np.int32)
    uniform = np.full((1, 3, task.num_outputs), 1.0 / task.num_outputs)
    assert task.metric_value(y, uniform) == pytest.approx(math.log2(task.num_outputs))


def test_typed_text_with_characters_outside_the_alphabet_is_refused():
    import pandas as pd

    task = build("text", length=3)
    with pytest.raises(ValueError, match="exactly one character"):
        task.from_table(pd.DataFrame({"character": ["a", "ab", "☃"]}))
