"""Statistics for comparing models on one test set: bootstrap intervals, paired differences, t-tests.

The paper's protocol: 1,000 bootstrap replicates of the test set, 95% percentile interval of
each model's metric and of the *paired* difference between two models (both scored on the same
resample), significant when that interval excludes 0; repeated runs as mean ± std with an
independent two-sample t-test. Resampling is by case (all rows of a case together), which is
plain example resampling when every row is its own case.

Pure numpy/scipy on predictions dicts and result dicts: no files, no printing (see `compare`, `tables`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import stats

from simclr_med.errors import DataError
from simclr_med.evaluation import metrics as metrics_lib

MetricFn = Callable[[dict], dict]


# ---------------------------------------------------------------- test-set alignment

def align_predictions(preds: Sequence[dict], sources: Sequence[str]) -> list[dict]:
    """Check that all predictions are on the first one's test set; reorder rows to match it.

    Rows are matched by case id when case ids are unique; otherwise the order must be equal.
    """
    base, base_src = preds[0], sources[0]
    aligned = [base]
    for pred, src in zip(preds[1:], sources[1:]):
        for key in ("multi_label", "class_names"):
            if not np.array_equal(pred[key], base[key]):
                raise DataError(f"{src}: {key} differs from {base_src}")
        pred = _match_rows(pred, src, base["case_ids"], base_src)
        checked = {"labels": "label", "label_mask": "label mask (another --uncertainty_policy?)"}
        for key in checked if bool(base["multi_label"]) else ["labels"]:
            if not np.array_equal(pred[key], base[key], equal_nan=True):
                row = _first_differing_row(pred[key], base[key])
                raise DataError(f"{src}: {checked[key]} of case {str(base['case_ids'][row])!r} (row {row}) "
                                f"differs from {base_src}; not the same test set")
        aligned.append(pred)
    return aligned


def _match_rows(pred: dict, src: str, base_ids: np.ndarray, base_src: str) -> dict:
    ids = pred["case_ids"]
    if np.array_equal(ids, base_ids):
        return pred
    missing = sorted(set(base_ids) - set(ids))
    extra = sorted(set(ids) - set(base_ids))
    if missing or extra or len(ids) != len(base_ids):
        raise DataError(f"{src}: not the same test set as {base_src} ({len(ids)} vs "
                         f"{len(base_ids)} rows; {len(missing)} case ids missing e.g. "
                         f"{missing[:3]}, {len(extra)} extra e.g. {extra[:3]})")
    if len(set(ids)) != len(ids):
        raise DataError(f"{src}: same case ids as {base_src} but in another order, and case ids "
                         "repeat, so rows cannot be matched; write both in the same order")
    position = {case: i for i, case in enumerate(ids)}
    return metrics_lib.select_rows(pred, np.array([position[c] for c in base_ids]))


def _first_differing_row(a: np.ndarray, b: np.ndarray) -> int:
    same = a == b
    if a.dtype.kind == "f":
        same |= np.isnan(a) & np.isnan(b)
    return int(np.argmin(same.reshape(len(a), -1).all(axis=1)))


# ---------------------------------------------------------------- bootstrap

def resample_rows(case_ids, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """Row indices of `n_boot` bootstrap replicates that resample whole cases with replacement."""
    _, index, _ = metrics_lib.case_groups(case_ids)
    order = np.argsort(index, kind="stable")  # rows grouped by case
    counts = np.bincount(index)
    starts = np.cumsum(counts) - counts
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        cases = rng.integers(0, len(counts), len(counts))
        sizes = counts[cases]
        offsets = np.repeat(starts[cases] - (np.cumsum(sizes) - sizes), sizes)
        yield order[offsets + np.arange(sizes.sum())]


def bootstrap_replicates(pred: dict, metric_fn: MetricFn = metrics_lib.compute_metrics,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Each scalar metric over `n_boot` case resamples (NaN where undefined on a replicate).

    The same `seed` gives the same resamples for every model on the same test set, which is
    what makes differences paired.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    reps: dict[str, np.ndarray] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one-class labels in a replicate are expected
        for i, rows in enumerate(resample_rows(pred["case_ids"], n_boot, seed)):
            for name, value in metric_fn(metrics_lib.select_rows(pred, rows)).items():
                if name != "num_examples":
                    reps.setdefault(name, np.full(n_boot, np.nan))[i] = metrics_lib.finite(value)
    return reps


def percentile_ci(value, reps: np.ndarray, alpha: float = 0.05) -> dict:
    """{"value", "low", "high", "replicates"}: point estimate, (1-alpha) percentile interval, and
    how many replicates it comes from (a rare class's AUC is undefined in those that miss it)."""
    low, high = _percentiles(reps, alpha)
    return {"value": value, "low": low, "high": high, "replicates": int(np.sum(~np.isnan(reps)))}


def diff_summary(value_a, value_b, reps_a: np.ndarray, reps_b: np.ndarray,
                 alpha: float = 0.05) -> dict:
    """Paired difference b - a: interval, two-sided bootstrap p-value, significance (p < alpha).

    p = 2 * min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (n + 1), capped at 1 (never exactly 0). The
    percentile interval comes from the same replicates; at the edge it can just touch 0 while
    p < alpha, or just miss it while p >= alpha.
    """
    diffs = reps_b - reps_a
    diffs = diffs[~np.isnan(diffs)]
    low, high = _percentiles(diffs, alpha)
    point = None if value_a is None or value_b is None else value_b - value_a
    if not diffs.size:
        return {"diff": point, "low": None, "high": None, "p_value": None, "significant": False,
                "replicates": 0}
    tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0)) + 1
    p_value = min(1.0, 2.0 * tail / (diffs.size + 1))
    return {"diff": point, "low": low, "high": high, "p_value": float(p_value),
            "significant": bool(p_value < alpha), "replicates": int(diffs.size)}


def bootstrap_ci(pred: dict, metric_fn: MetricFn = metrics_lib.compute_metrics,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """Per metric {"value", "low", "high"} with a case-bootstrap percentile interval."""
    point = metric_fn(pred)
    reps = bootstrap_replicates(pred, metric_fn, n_boot, seed)
    names = metrics or sorted(reps)
    return {m: percentile_ci(point.get(m), reps.get(m, np.array([])), alpha) for m in names}


def paired_bootstrap_diff(pred_a: dict, pred_b: dict,
                          metric_fn: MetricFn = metrics_lib.compute_metrics, n_boot: int = 1000,
                          seed: int = 0, alpha: float = 0.05,
                          metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """Per metric the paired bootstrap difference b - a (see diff_summary)."""
    pred_a, pred_b = align_predictions([pred_a, pred_b], ["model a", "model b"])
    point_a, point_b = metric_fn(pred_a), metric_fn(pred_b)
    reps_a = bootstrap_replicates(pred_a, metric_fn, n_boot, seed)
    reps_b = bootstrap_replicates(pred_b, metric_fn, n_boot, seed)
    names = metrics or sorted(set(reps_a) & set(reps_b))
    empty = np.array([])
    return {m: diff_summary(point_a.get(m), point_b.get(m), reps_a.get(m, empty),
                            reps_b.get(m, empty), alpha) for m in names}


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)]
    if not values.size:
        return None, None
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


# ---------------------------------------------------------------- repeated runs

def mean_std(values: Sequence[float | None]) -> dict:
    """{"mean", "std", "n"} of the values that are not None (sample std, ddof=1; None if n < 2)."""
    values = [v for v in values if v is not None]
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "n": len(values)}


def repeated_runs_summary(runs: dict[str, Sequence[dict]],
                          metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """{model: {metric: mean_std}} over each model's runs (result dicts)."""
    return {model: {name: mean_std(metric_values(results, name))
                    for name in metrics or common_metrics(results)}
            for model, results in runs.items()}


def ttest(values_a: Sequence[float], values_b: Sequence[float], equal_var: bool = True,
          alpha: float = 0.05) -> dict:
    """Independent two-sample t-test (scipy.stats.ttest_ind) of b against a."""
    a, b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    if a.size < 1 or b.size < 1 or a.size + b.size < 3:
        raise ValueError(f"t-test needs >= 1 value per model and >= 3 in all, got {a.size} "
                         f"and {b.size}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero variance gives NaN, reported as None
        result = stats.ttest_ind(b, a, equal_var=equal_var)
    p_value = metrics_lib.finite(result.pvalue)
    return {"mean_diff": float(b.mean() - a.mean()), "t": metrics_lib.finite(result.statistic),
            "p_value": p_value, "significant": bool(p_value is not None and p_value < alpha)}


def metric_values(results: Sequence[dict], name: str) -> list[float]:
    """The defined values of metric `name` over result dicts (a run without it, or None, is skipped)."""
    values = [metrics_lib.finite(r.get(name)) for r in results]
    return [v for v in values if v is not None]


def common_metrics(results: Sequence[dict]) -> list[str]:
    """Numeric keys present in every result, minus bookkeeping fields."""
    skip = {"global_step", "num_examples", "seed", "label_fraction"}
    keys = [k for k, v in results[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip]
    return [k for k in keys if all(k in r for r in results[1:])]


# ---------------------------------------------------------------- subgroups

def subgroup_metrics(pred: dict, key: str, metric_fn: MetricFn = metrics_lib.compute_metrics,
                     min_examples: int = 1) -> dict[str, dict]:
    """{value: metrics} for each value of metadata column `meta_<key>` with enough examples."""
    column = f"meta_{key}"
    if column not in pred:
        available = sorted(k[len("meta_"):] for k in pred if k.startswith("meta_"))
        raise ValueError(f"no metadata column {column!r}; available subgroups: {available}")
    values = np.asarray(pred[column]).astype(str)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in sorted(set(values)):
            rows = np.flatnonzero(values == value)
            if rows.size >= min_examples:
                out[value] = metric_fn(metrics_lib.select_rows(pred, rows))
    return out


def subgroup_cis(pred: dict, key: str, metrics: Sequence[str],
                 metric_fn: MetricFn = metrics_lib.compute_metrics, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> dict[str, dict]:
    """{value: {"num_examples", "ci": {metric: percentile_ci}}} for each subgroup of `meta_<key>`,
    each bootstrapped on its own rows."""
    values = np.asarray(pred.get(f"meta_{key}", [])).astype(str)
    out = {}
    for value, point in subgroup_metrics(pred, key, metric_fn).items():
        subset = metrics_lib.select_rows(pred, np.flatnonzero(values == value))
        reps = bootstrap_replicates(subset, metric_fn, n_boot, seed)
        cis = {m: percentile_ci(point.get(m), reps.get(m, np.array([])), alpha) for m in metrics}
        out[value] = {"num_examples": point["num_examples"], "ci": cis}
    return out
