"""Compare models on one test set: bootstrap intervals, paired differences, t-tests, subgroups.

The paper's protocol: 1,000 bootstrap replicates of the test set, 95% percentile interval of
each model's metric and of the *paired* difference between two models (both scored on the same
resample), significant when that interval excludes 0; repeated runs as mean ± std with an
independent two-sample t-test. Resampling is by case (all rows of a case together), which is
plain example resampling when every row is its own case.

    python -m simclr_med.evaluation.compare runs/a/predictions.npz runs/b/predictions.npz --names a,b \
        --subgroup sex --output report.json
    python -m simclr_med.evaluation.compare --runs "simclr=runs/simclr_*/result.json" \
        --runs "supervised=runs/sup_*/result.json"
"""
from __future__ import annotations

import argparse
import functools
import glob
import itertools
import json
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from simclr_med.evaluation import metrics as metrics_lib
from simclr_med.errors import DataError

MetricFn = Callable[[dict], dict]
MULTICLASS_HEADLINE = ("top1_accuracy", "top3_accuracy", "top1_sensitivity", "top3_sensitivity",
                       "auc", "kappa_quadratic")
RUN_HEADLINE = MULTICLASS_HEADLINE + ("mean_auc",)


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
                raise DataError(f"{src}: {checked[key]} of case {str(base['case_ids'][row])!r} (row {row}) differs "
                                f"from {base_src}; not the same test set")
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


def by_case(pred: dict) -> dict:
    """Average a per-image predictions dict to one row per case (metadata of its first image)."""
    _, _, first = metrics_lib.case_groups(pred["case_ids"])
    out = metrics_lib.select_rows({k: v for k, v in pred.items() if k != "embeddings"}, first)
    out.update(metrics_lib.average_by_case(pred["probs"], pred["case_ids"], pred["labels"],
                                           pred.get("label_mask")))
    return out


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
        return {"diff": point, "low": None, "high": None, "p_value": None, "significant": False, "replicates": 0}
    tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0)) + 1
    p_value = min(1.0, 2.0 * tail / (diffs.size + 1))
    return {"diff": point, "low": low, "high": high, "p_value": float(p_value), "significant": bool(p_value < alpha),
            "replicates": int(diffs.size)}


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


# ---------------------------------------------------------------- repeated runs

def repeated_runs_summary(runs: dict[str, Sequence[dict]],
                          metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """{model: {metric: {"mean", "std", "n"}}} over runs (sample std, ddof=1; None if n < 2)."""
    summary = {}
    for model, results in runs.items():
        names = metrics or _common_metrics(results)
        summary[model] = {}
        for name in names:
            values = _metric_values(results, name)
            summary[model][name] = {
                "mean": float(np.mean(values)) if values else None,
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "n": len(values)}
    return summary


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


def load_run_metrics(path: str, graded: bool = False) -> dict:
    """Metrics of one run: a result.json (flat dict) or a predictions .npz (computed)."""
    if str(path).endswith(".npz"):
        return metrics_lib.compute_metrics(metrics_lib.load_predictions(path), graded=graded)
    return metrics_lib.load_result(path)


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


# ---------------------------------------------------------------- CLI

def headline_metrics(pred: dict, graded: bool = False) -> list[str]:
    """The metrics the paper reports for this kind of predictions file."""
    if bool(pred["multi_label"]):
        tasks = list(pred.get("eval_tasks", [])) or list(metrics_lib.CHEXPERT_TASKS)
        names = metrics_lib.resolve_tasks(tasks, list(pred["class_names"]))
        return ["mean_auc"] + [f"auc_{t}" for t in names]
    return [m for m in MULTICLASS_HEADLINE if graded or m != "kappa_quadratic"]


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m simclr_med.evaluation.compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("predictions", nargs="*", help="predictions.npz files; the first is the "
                        "baseline")
    parser.add_argument("--names", default="", help="comma-separated model names for the files")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--alpha", type=float, default=0.05, help="1 - interval coverage")
    parser.add_argument("--metrics", default="", help="comma-separated metrics to report "
                        "('all' for every scalar metric; default: the paper's headline metrics)")
    parser.add_argument("--all-pairs", action="store_true", help="compare every pair, not just "
                        "each model against the first")
    parser.add_argument("--by-case", action="store_true", help="average probabilities over the "
                        "images of each case first")
    parser.add_argument("--graded", action="store_true", help="labels are ordinal grades: add "
                        "quadratic-weighted kappa")
    parser.add_argument("--subgroup", action="append", default=[], help="metadata key "
                        "(meta_<key> in the files) to break metrics down by; repeatable")
    parser.add_argument("--runs", action="append", default=[], metavar="NAME=GLOB",
                        help="repeated runs of one model (result.json or .npz files); repeatable")
    parser.add_argument("--output", default="", help="write the report as JSON here")
    args = parser.parse_args(argv)
    if not args.predictions and not args.runs:
        parser.error("give predictions files and/or --runs NAME=GLOB")
    return args


def _model_names(paths: Sequence[str], names: str) -> list[str]:
    if names:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(paths):
            raise ValueError(f"--names has {len(out)} names for {len(paths)} files")
    else:
        out = [Path(p).parent.name if Path(p).stem == "predictions" else Path(p).stem
               for p in paths]
    if len(set(out)) != len(out):
        out = [f"{name}#{i}" for i, name in enumerate(out)]
    return out


def _select(metric_names: str, pred: dict, graded: bool, point: dict) -> list[str]:
    if metric_names == "all":
        return sorted(k for k in point if k != "num_examples")
    if metric_names:
        names = [m.strip() for m in metric_names.split(",")]
        unknown = [m for m in names if m not in point]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; available: "
                             f"{sorted(k for k in point if k != 'num_examples')}")
        return names
    return headline_metrics(pred, graded)


def _compare_files(args) -> dict:
    metric_fn = functools.partial(metrics_lib.compute_metrics, graded=args.graded)
    paths = args.predictions
    names = _model_names(paths, args.names)
    preds = align_predictions([metrics_lib.load_predictions(p) for p in paths], paths)
    if args.by_case:
        preds = [by_case(p) for p in preds]
    points = [metric_fn(p) for p in preds]
    selected = _select(args.metrics, preds[0], args.graded, points[0])
    reps = [bootstrap_replicates(p, metric_fn, args.bootstrap, args.seed) for p in preds]
    empty = np.array([])
    report = {"models": {}, "comparisons": [], "subgroups": {}}
    for name, path, point, rep in zip(names, paths, points, reps):
        report["models"][name] = {
            "file": path, "num_examples": point["num_examples"], "metrics": point,
            "ci": {m: percentile_ci(point.get(m), rep.get(m, empty), args.alpha)
                   for m in selected}}
    pairs = (itertools.combinations(range(len(preds)), 2) if args.all_pairs
             else [(0, j) for j in range(1, len(preds))])
    for i, j in pairs:
        report["comparisons"].append({"a": names[i], "b": names[j], "metrics": {
            m: diff_summary(points[i].get(m), points[j].get(m), reps[i].get(m, empty),
                            reps[j].get(m, empty), args.alpha) for m in selected}})
    for key in _split_commas(args.subgroup):
        report["subgroups"][key] = {name: _subgroup_report(pred, key, metric_fn, selected, args)
                                    for name, pred in zip(names, preds)}
    return report


def _subgroup_report(pred, key, metric_fn, selected, args) -> dict:
    values = np.asarray(pred.get(f"meta_{key}", [])).astype(str)
    out = {}
    for value, point in subgroup_metrics(pred, key, metric_fn).items():
        subset = metrics_lib.select_rows(pred, np.flatnonzero(values == value))
        reps = bootstrap_replicates(subset, metric_fn, args.bootstrap, args.seed)
        out[value] = {"num_examples": point["num_examples"], "ci": {
            m: percentile_ci(point.get(m), reps.get(m, np.array([])), args.alpha)
            for m in selected}}
    return out


def _compare_runs(args) -> dict:
    runs = {}
    for spec in args.runs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or not pattern:
            raise ValueError(f"--runs {spec!r}: expected NAME=GLOB")
        files = sorted(glob.glob(pattern))
        if not files:
            raise ValueError(f"--runs {spec!r}: no files match {pattern!r}")
        runs[name] = [load_run_metrics(f, args.graded) for f in files]
    names = list(runs)
    first = runs[names[0]]
    selected = ([m.strip() for m in args.metrics.split(",")] if args.metrics not in ("", "all")
                else [m for m in _common_metrics(first)
                      if args.metrics == "all" or m in RUN_HEADLINE or m.startswith("auc_")])
    unknown = [m for m in selected if not _metric_values(first, m)]
    if unknown:
        raise ValueError(f"--runs {names[0]}: no values for metrics {unknown}")
    summary = repeated_runs_summary(runs, selected)
    tests = []
    pairs = (itertools.combinations(names, 2) if args.all_pairs
             else [(names[0], other) for other in names[1:]])
    for a, b in pairs:
        tests.append({"a": a, "b": b, "metrics": {
            m: _ttest_or_none(_metric_values(runs[a], m), _metric_values(runs[b], m), args.alpha)
            for m in selected}})
    return {"summary": summary, "ttests": tests}


def _ttest_or_none(a, b, alpha) -> dict | None:
    try:
        return ttest(a, b, alpha=alpha)
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        report = {"settings": {"bootstrap": args.bootstrap, "seed": args.seed,
                               "alpha": args.alpha, "by_case": args.by_case}}
        if args.predictions:
            report.update(_compare_files(args))
        if args.runs:
            report["runs"] = _compare_runs(args)
    except (ValueError, OSError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    report = to_jsonable(report)
    print(format_report(report))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2, allow_nan=False)
        print(f"\nwrote {args.output}")
    return 0


# ---------------------------------------------------------------- report formatting

def format_report(report: dict) -> str:
    """The report as plain-text tables."""
    coverage = f"{100 * (1 - report['settings']['alpha']):g}%"
    blocks = []
    models = report.get("models", {})
    if models:
        names = list(models)
        metric_names = list(next(iter(models.values()))["ci"])
        rows = [[m] + [_fmt_ci(models[n]["ci"][m]) for n in names] for m in metric_names]
        rows.append(["num_examples"] + [str(models[n]["num_examples"]) for n in names])
        blocks.append(f"Metrics with bootstrap {coverage} intervals "
                      f"({report['settings']['bootstrap']} replicates)\n"
                      + _table(["metric"] + names, rows))
    for comp in report.get("comparisons", []):
        rows = [[m, _fmt(d["diff"]), _fmt_interval(d["low"], d["high"]), _fmt(d["p_value"]),
                 "*" if d["significant"] else ""] for m, d in comp["metrics"].items()]
        blocks.append(f"Paired difference {comp['b']} - {comp['a']}\n"
                      + _table(["metric", "diff", f"{coverage} CI", "p", "sig"], rows))
    for key, per_model in report.get("subgroups", {}).items():
        for name, groups in per_model.items():
            metric_names = list(next(iter(groups.values()))["ci"]) if groups else []
            rows = [[value, str(g["num_examples"])] + [_fmt_ci(g["ci"][m]) for m in metric_names]
                    for value, g in groups.items()]
            blocks.append(f"Subgroups by {key}: {name}\n"
                          + _table([key, "n"] + metric_names, rows))
    runs = report.get("runs")
    if runs:
        names = list(runs["summary"])
        metric_names = list(next(iter(runs["summary"].values())))
        rows = [[m] + [_fmt_mean_std(runs["summary"][n].get(m)) for n in names]
                for m in metric_names]
        blocks.append("Repeated runs: mean ± std (n)\n" + _table(["metric"] + names, rows))
        for test in runs["ttests"]:
            rows = [[m, _fmt(t and t["mean_diff"]), _fmt(t and t["t"]), _fmt(t and t["p_value"]),
                     "*" if t and t["significant"] else ""] for m, t in test["metrics"].items()]
            blocks.append(f"t-test {test['b']} vs {test['a']}\n"
                          + _table(["metric", "mean diff", "t", "p", "sig"], rows))
    return "\n\n".join(blocks)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_interval(low, high) -> str:
    return "-" if low is None else f"[{low:.4f}, {high:.4f}]"


def _fmt_ci(ci: dict) -> str:
    return f"{_fmt(ci['value'])} {_fmt_interval(ci['low'], ci['high'])}"


def _fmt_mean_std(s: dict | None) -> str:
    if not s or s["mean"] is None:
        return "-"
    std = "-" if s["std"] is None else f"{s['std']:.4f}"
    return f"{s['mean']:.4f} ± {std} ({s['n']})"


# ---------------------------------------------------------------- helpers

def to_jsonable(obj):
    """Plain Python types only: numpy scalars/arrays converted, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return metrics_lib.finite(obj)
    return obj


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float | None, float | None]:
    values = values[~np.isnan(values)]
    if not values.size:
        return None, None
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


def _metric_values(results: Sequence[dict], name: str) -> list[float]:
    values = [metrics_lib.finite(r.get(name)) for r in results]
    return [v for v in values if v is not None]


def _common_metrics(results: Sequence[dict]) -> list[str]:
    """Numeric keys present in every result, minus bookkeeping fields."""
    skip = {"global_step", "num_examples", "seed", "label_fraction"}
    keys = [k for k, v in results[0].items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in skip]
    return [k for k in keys if all(k in r for r in results[1:])]


def _split_commas(items: Sequence[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
