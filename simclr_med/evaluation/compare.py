"""Compare models on one test set: bootstrap intervals, paired differences, t-tests, subgroups.

The command line over `statistics` (the paper's protocol: case-bootstrap percentile intervals,
paired differences, t-tests of repeated runs) and `tables` (the report as text and JSON).

    python -m simclr_med.evaluation.compare runs/a/predictions.npz runs/b/predictions.npz --names a,b \
        --subgroup sex --output report.json
    python -m simclr_med.evaluation.compare --runs "simclr=runs/simclr_*/result.json" \
        --runs "supervised=runs/sup_*/result.json"
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
from collections.abc import Sequence

import numpy as np

from simclr_med import io
from simclr_med.data.labels import CHEXPERT_TASKS
from simclr_med.errors import storage_errors
from simclr_med.evaluation import metrics as metrics_lib
from simclr_med.evaluation import statistics, tables

MULTICLASS_HEADLINE = ("top1_accuracy", "top3_accuracy", "top1_sensitivity", "top3_sensitivity",
                       "auc", "kappa_quadratic")
RUN_HEADLINE = MULTICLASS_HEADLINE + ("mean_auc",)


def load_run_metrics(path: str, graded: bool = False) -> dict:
    """Metrics of one run: a result.json (flat dict) or a predictions .npz (computed)."""
    if str(path).endswith(".npz"):
        return metrics_lib.compute_metrics(metrics_lib.load_predictions(path), graded=graded)
    return metrics_lib.load_result(path)


def headline_metrics(pred: dict, graded: bool = False) -> list[str]:
    """The metrics the paper reports for this kind of predictions file."""
    if bool(pred["multi_label"]):
        tasks = list(pred.get("eval_tasks", [])) or list(CHEXPERT_TASKS)
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
        stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        out = [os.path.basename(os.path.dirname(p)) if stem == "predictions" else stem
               for p, stem in zip(paths, stems)]
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
    preds = statistics.align_predictions([metrics_lib.load_predictions(p) for p in paths], paths)
    if args.by_case:
        preds = [metrics_lib.average_by_case(p) for p in preds]
    points = [metric_fn(p) for p in preds]
    selected = _select(args.metrics, preds[0], args.graded, points[0])
    reps = [statistics.bootstrap_replicates(p, metric_fn, args.bootstrap, args.seed) for p in preds]
    empty = np.array([])
    report = {"models": {}, "comparisons": [], "subgroups": {}}
    for name, path, point, rep in zip(names, paths, points, reps):
        report["models"][name] = {
            "file": path, "num_examples": point["num_examples"], "metrics": point,
            "ci": {m: statistics.percentile_ci(point.get(m), rep.get(m, empty), args.alpha)
                   for m in selected}}
    pairs = (itertools.combinations(range(len(preds)), 2) if args.all_pairs
             else [(0, j) for j in range(1, len(preds))])
    for i, j in pairs:
        report["comparisons"].append({"a": names[i], "b": names[j], "metrics": {
            m: statistics.diff_summary(points[i].get(m), points[j].get(m), reps[i].get(m, empty),
                                       reps[j].get(m, empty), args.alpha) for m in selected}})
    for key in _split_commas(args.subgroup):
        report["subgroups"][key] = {
            name: statistics.subgroup_cis(pred, key, selected, metric_fn, args.bootstrap, args.seed,
                                          args.alpha)
            for name, pred in zip(names, preds)}
    return report


def _compare_runs(args) -> dict:
    runs = {}
    for spec in args.runs:
        name, sep, pattern = spec.partition("=")
        if not sep or not name or not pattern:
            raise ValueError(f"--runs {spec!r}: expected NAME=GLOB")
        files = io.glob(pattern)
        if not files:
            raise ValueError(f"--runs {spec!r}: no files match {pattern!r}")
        runs[name] = [load_run_metrics(f, args.graded) for f in files]
    names = list(runs)
    first = runs[names[0]]
    selected = ([m.strip() for m in args.metrics.split(",")] if args.metrics not in ("", "all")
                else [m for m in statistics.common_metrics(first)
                      if args.metrics == "all" or m in RUN_HEADLINE or m.startswith("auc_")])
    unknown = [m for m in selected if not statistics.metric_values(first, m)]
    if unknown:
        raise ValueError(f"--runs {names[0]}: no values for metrics {unknown}")
    summary = statistics.repeated_runs_summary(runs, selected)
    tests = []
    pairs = (itertools.combinations(names, 2) if args.all_pairs
             else [(names[0], other) for other in names[1:]])
    for a, b in pairs:
        tests.append({"a": a, "b": b, "metrics": {
            m: _ttest_or_none(statistics.metric_values(runs[a], m), statistics.metric_values(runs[b], m),
                              args.alpha)
            for m in selected}})
    return {"summary": summary, "ttests": tests}


def _ttest_or_none(a, b, alpha) -> dict | None:
    try:
        return statistics.ttest(a, b, alpha=alpha)
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        with storage_errors(args.output):
            report = {"settings": {"bootstrap": args.bootstrap, "seed": args.seed,
                                   "alpha": args.alpha, "by_case": args.by_case}}
            if args.predictions:
                report.update(_compare_files(args))
            if args.runs:
                report["runs"] = _compare_runs(args)
            report = tables.to_jsonable(report)
            print(tables.format_report(report))
            if args.output:
                io.write_json(args.output, report, allow_nan=False)
                print(f"\nwrote {args.output}")
    except (ValueError, OSError) as err:
        print(f"compare: error: {err}", file=sys.stderr)
        return 2
    return 0


def _split_commas(items: Sequence[str]) -> list[str]:
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


if __name__ == "__main__":
    sys.exit(main())
