"""Verdicts, not just bands: is one group of runs better than another, with these seeds?

For a per-run statistic (best / last / at epoch N of a metric) and groups of runs (`compare.group_labels`), each
pair of groups gets the difference of their means with a 95% interval (Welch's t, or a percentile bootstrap),
Hedges' g as effect size, Welch's two-sided p-value corrected for the pairs shown (Holm), a sentence, and how
many seeds per group an interval of a chosen width would need. Diverged runs (NaN, inf) have no statistic and are
left out; a group needs two runs with a value for a verdict.
"""

import itertools

import numpy as np
import pandas as pd
from scipy import stats

from rnnlib.analysis import compare

LEVEL = 0.95
ALPHA = 0.05
BOOTSTRAP_SAMPLES = 4_000
MAX_ALL_PAIRS = 6  # groups up to which every pair is shown; beyond, each group against the best
MAX_TIES_LISTED = 3  # undetectable pairs named one by one; more are summed up in one sentence
METHODS = {"welch": "Welch t interval", "bootstrap": "percentile bootstrap interval"}
COLUMNS = ["better", "worse", "n_better", "n_worse", "difference", "lower", "upper", "effect_size", "p", "p_holm",
           "verdict", "seeds_needed"]


def welch(a: np.ndarray, b: np.ndarray, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean(a) − mean(b), lower, upper, two-sided p) by Welch's t with Welch–Satterthwaite degrees of freedom."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    difference = float(a.mean() - b.mean())
    se = np.sqrt(va + vb)
    if se == 0:
        return difference, difference, difference, 0.0 if difference != 0 else 1.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    p = 2 * stats.t.sf(abs(difference) / se, df)
    return difference, difference - half, difference + half, float(p)


def bootstrap_interval(a: np.ndarray, b: np.ndarray, level: float = LEVEL, samples: int = BOOTSTRAP_SAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) − mean(b), resampling each group with replacement (seeded)."""
    rng = np.random.default_rng(seed)
    means_a = rng.choice(a, size=(samples, len(a))).mean(axis=1)
    means_b = rng.choice(b, size=(samples, len(b))).mean(axis=1)
    low, high = np.quantile(means_a - means_b, [0.5 - level / 2, 0.5 + level / 2])
    return float(low), float(high)


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference with the small-sample correction (Hedges' g)."""
    na, nb = len(a), len(b)
    pooled = np.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return 0.0 if a.mean() == b.mean() else float(np.sign(a.mean() - b.mean()) * np.inf)
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of `p_values` (family-wise error over all of them)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (len(p) - rank) * p[index])
        adjusted[index] = min(running, 1.0)
    return adjusted


def seeds_needed(a: np.ndarray, b: np.ndarray, width: float, level: float = LEVEL, limit: int = 10_000) -> int | None:
    """Runs per group for a Welch interval of total `width`, if the groups' spread stays as it is now; None
    beyond `limit`. Every n from 2 to `limit` is tried at once (one vectorised t quantile, not one per n)."""
    if width <= 0:
        return None
    va, vb = a.var(ddof=1), b.var(ddof=1)
    n = np.arange(2, limit + 1)
    se = np.sqrt((va + vb) / n)
    df = (va + vb) ** 2 / ((va**2 + vb**2) / (n - 1)) if va + vb > 0 else n - 1
    enough = 2 * stats.t.ppf(0.5 + level / 2, df) * se <= width
    return int(n[np.argmax(enough)]) if enough.any() else None


def pairs(per_run: pd.Series, runs: pd.DataFrame, group_by: list[str], method: str = "welch",
          width: float | None = None, seed: int = 0) -> pd.DataFrame:
    """One row per pair of groups, the better one first (lower is better for losses and errors, higher for
    accuracies: `compare.higher_is_better`): `COLUMNS`. `difference` is better − worse, so it is negative for
    a loss. `width`: the interval width `seeds_needed` aims at (default: half the largest |difference|)."""
    higher = compare.higher_is_better(per_run.name or "")
    labels = pd.Series(compare.group_labels(runs, group_by).to_numpy(), index=runs["run_id"])
    values = per_run.reindex(labels.index)
    groups = {g: v[np.isfinite(v)] for g, v in ((g, values[labels == g].to_numpy(dtype=float))
                                                 for g in labels.unique())}
    groups = {g: v for g, v in groups.items() if len(v) >= 2}
    if len(groups) < 2:
        return pd.DataFrame(columns=COLUMNS)
    ranked = sorted(groups, key=lambda g: -groups[g].mean() if higher else groups[g].mean())
    chosen = (list(itertools.combinations(ranked, 2)) if len(ranked) <= MAX_ALL_PAIRS
              else [(ranked[0], other) for other in ranked[1:]])
    rows = []
    for better, worse in chosen:
        a, b = groups[better], groups[worse]
        difference, lower, upper, p = welch(a, b)
        if method == "bootstrap":
            lower, upper = bootstrap_interval(a, b, seed=seed)
        rows.append({"better": better, "worse": worse, "n_better": len(a), "n_worse": len(b),
                     "difference": difference, "lower": lower, "upper": upper, "effect_size": hedges_g(a, b),
                     "p": p})
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    aim = width if width else max(float(table["difference"].abs().max()) / 2, 1e-12)
    table["seeds_needed"] = [seeds_needed(groups[r.better], groups[r.worse], aim) for r in table.itertuples()]
    table["verdict"] = [verdict(r.better, r.worse, r.difference, r.lower, r.upper, r.p_holm, r.n_better, r.n_worse)
                        for r in table.itertuples()]
    return table[COLUMNS]


def verdict(better: str, worse: str, difference: float, lower: float, upper: float, p_holm: float, n_better: int,
            n_worse: int) -> str:
    """`gru beats lstm by 0.0014 ± 0.0006 (n = 3 vs 3)`, or that these seeds cannot tell them apart."""
    counts = f"(n = {n_better} vs {n_worse})"
    if detectable(p_holm, lower, upper):
        half = (upper - lower) / 2
        return f"{better} beats {worse} by {abs(difference):.3g} ± {half:.2g} {counts}"
    return f"no detectable difference between {better} and {worse} with these seeds {counts}"


def detectable(p_holm, lower, upper):
    """Whether a difference is a verdict: significant after Holm's correction and an interval that excludes 0
    (elementwise for columns)."""
    return (p_holm < ALPHA) & ((lower > 0) | (upper < 0))


def headlines(table: pd.DataFrame) -> list[str]:
    """The sentences to show above a `pairs` table: every detectable verdict, then the pairs these seeds cannot
    tell apart, one by one when there are few (`MAX_TIES_LISTED`), else summed up in one sentence."""
    detected = detectable(table["p_holm"], table["lower"], table["upper"])
    lines = table.loc[detected, "verdict"].tolist()
    ties = table[~detected]
    if len(ties) <= MAX_TIES_LISTED:
        return lines + ties["verdict"].tolist()
    counts = sorted({int(n) for n in (*ties["n_better"], *ties["n_worse"])})
    runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    which = "the other" if lines else "all"
    lines.append(f"no detectable difference with these seeds for {which} {len(ties)} pairs ({runs} runs per group); "
                 "the table below says how many seeds each would need")
    return lines
