"""Verdicts on Compare: differences of groups with intervals, effect sizes and Holm-corrected p-values, checked
against scipy and statsmodels."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from rnnlib.analysis import verdicts


def frame(values: dict[str, list[float]]):
    rows = [(f"{g}{i}", g, v) for g, vs in values.items() for i, v in enumerate(vs)]
    runs = pd.DataFrame({"run_id": [r[0] for r in rows], "params.model.label": [r[1] for r in rows]})
    return pd.Series([r[2] for r in rows], index=runs["run_id"], name="val_loss"), runs


def test_welch_interval_and_p_equal_scipys():
    a, b = np.array([0.10, 0.12, 0.11, 0.13]), np.array([0.20, 0.16, 0.25])
    difference, lower, upper, p = verdicts.welch(a, b)
    result = stats.ttest_ind(a, b, equal_var=False)
    interval = result.confidence_interval(0.95)
    assert difference == pytest.approx(a.mean() - b.mean())
    assert (lower, upper) == pytest.approx((interval.low, interval.high), rel=1e-10)
    assert p == pytest.approx(result.pvalue, rel=1e-10)


def test_holm_equals_statsmodels():
    p = [0.01, 0.04, 0.03, 0.5, 0.002]
    assert verdicts.holm(p) == pytest.approx(multipletests(p, method="holm")[1])


def test_hedges_g_is_cohens_d_with_the_small_sample_correction():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 4.0, 5.0])
    pooled = np.sqrt((2 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 5)
    assert verdicts.hedges_g(a, b) == pytest.approx((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * 7 - 9)))


def test_a_clear_winner_gets_a_verdict_and_a_tie_does_not():
    per_run, runs = frame({"gru": [0.010, 0.011, 0.012], "lstm": [0.050, 0.052, 0.048], "rnn": [0.0105, 0.02, 0.005]})
    table = verdicts.pairs(per_run, runs, ["model.label"]).set_index(["better", "worse"])
    clear = table.loc[("gru", "lstm")]
    assert clear["difference"] == pytest.approx(0.011 - 0.05)  # better minus worse: negative for a loss
    assert clear["verdict"].startswith("gru beats lstm by 0.039 ± ") and clear["verdict"].endswith("(n = 3 vs 3)")
    p = [stats.ttest_ind(*pair, equal_var=False).pvalue for pair in (
        ([0.010, 0.011, 0.012], [0.0105, 0.02, 0.005]), ([0.010, 0.011, 0.012], [0.050, 0.052, 0.048]),
        ([0.0105, 0.02, 0.005], [0.050, 0.052, 0.048]))]
    assert table["p_holm"].tolist() == pytest.approx(multipletests(p, method="holm")[1].tolist())
    tie = table.loc[("gru", "rnn")]
    assert tie["verdict"] == "no detectable difference between gru and rnn with these seeds (n = 3 vs 3)"
    assert tie["lower"] < 0 < tie["upper"]


def test_accuracy_ranks_higher_first_and_diverged_runs_are_left_out():
    per_run, runs = frame({"gru": [0.9, 0.92, np.nan], "lstm": [0.6, 0.62, 0.61]})
    per_run.name = "val_accuracy"
    (row,) = verdicts.pairs(per_run, runs, ["model.label"]).itertuples()
    assert row.better == "gru" and row.n_better == 2 and row.difference > 0


def test_many_undetectable_pairs_read_as_one_sentence_after_the_verdicts():
    per_run, runs = frame({"gru": [0.010, 0.011, 0.012], "lstm": [0.050, 0.052, 0.048], "rnn": [0.049, 0.053, 0.05],
                           "elman": [0.051, 0.047, 0.052], "mgu": [0.05, 0.046, 0.054]})
    table = verdicts.pairs(per_run, runs, ["model.label"])
    lines = verdicts.headlines(table)
    assert len(table) == 10 and all(line.startswith("gru beats ") for line in lines[:4])
    assert lines[4:] == ["no detectable difference with these seeds for the other 6 pairs (3 runs per group); the "
                         "table below says how many seeds each would need"]
    few = verdicts.headlines(table.iloc[:6])  # 4 verdicts and 2 ties: each named
    assert len(few) == 6 and few[-1].startswith("no detectable difference between ")


def test_a_group_of_one_run_gets_no_verdict():
    per_run, runs = frame({"gru": [0.1, 0.2], "lstm": [0.3]})
    assert verdicts.pairs(per_run, runs, ["model.label"]).empty


def test_the_bootstrap_interval_is_seeded_and_close_to_welchs_with_many_runs():
    rng = np.random.default_rng(0)
    per_run, runs = frame({"gru": list(rng.normal(0.1, 0.01, 40)), "lstm": list(rng.normal(0.12, 0.01, 40))})
    welch = verdicts.pairs(per_run, runs, ["model.label"]).iloc[0]
    boot = verdicts.pairs(per_run, runs, ["model.label"], method="bootstrap").iloc[0]
    assert boot["lower"] == pytest.approx(welch["lower"], abs=0.002) and boot["upper"] == pytest.approx(
        welch["upper"], abs=0.002)
    assert verdicts.pairs(per_run, runs, ["model.label"], method="bootstrap").iloc[0]["lower"] == boot["lower"]


def test_seeds_needed_shrinks_the_welch_interval_to_the_width_asked():
    a, b = np.array([0.10, 0.13, 0.11]), np.array([0.20, 0.16, 0.25])
    n = verdicts.seeds_needed(a, b, 0.02)
    va, vb = a.var(ddof=1), b.var(ddof=1)

    def width(k):
        df = (va + vb) ** 2 / ((va**2 + vb**2) / (k - 1))
        return 2 * stats.t.ppf(0.975, df) * np.sqrt((va + vb) / k)

    assert width(n) <= 0.02 < width(n - 1)


def test_seeds_needed_is_the_first_n_of_the_one_at_a_time_search_it_replaced():
    def one_at_a_time(a, b, width, limit=10_000):  # the search before it was vectorised, one t quantile per n
        va, vb = a.var(ddof=1), b.var(ddof=1)
        for n in range(2, limit + 1):
            df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1)) if va + vb > 0 else n - 1
            if 2 * stats.t.ppf(0.975, df) * np.sqrt((va + vb) / n) <= width:
                return n
        return None

    rng = np.random.default_rng(3)
    cases = [(rng.normal(0, s, size), rng.normal(0.1, s, size), width) for s in (0.01, 0.1) for size in (2, 5)
             for width in (0.001, 0.01, 0.05, 1.0)]
    cases += [(np.array([0.1, 0.1]), np.array([0.2, 0.2]), 0.01)]  # no spread: two runs are enough
    for a, b, width in cases:
        assert verdicts.seeds_needed(a, b, width) == one_at_a_time(a, b, width)
    assert verdicts.seeds_needed(*cases[0][:2], 1e-9, limit=50) is None  # beyond the limit
