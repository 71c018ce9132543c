"""Reports as text and JSON: the comparison report's tables, plain-text tables, JSON-safe values.

Shared by the `compare` CLI and the transfer benchmark's table; nothing here computes a statistic.
"""
from __future__ import annotations

import numpy as np

from simclr_med.evaluation import metrics


def format_report(report: dict) -> str:
    """A `compare` report (models, comparisons, subgroups, runs) as plain-text tables."""
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
                      + text_table(["metric"] + names, rows))
    for comp in report.get("comparisons", []):
        rows = [[m, _fmt(d["diff"]), _fmt_interval(d["low"], d["high"]), _fmt(d["p_value"]),
                 "*" if d["significant"] else ""] for m, d in comp["metrics"].items()]
        blocks.append(f"Paired difference {comp['b']} - {comp['a']}\n"
                      + text_table(["metric", "diff", f"{coverage} CI", "p", "sig"], rows))
    for key, per_model in report.get("subgroups", {}).items():
        for name, groups in per_model.items():
            metric_names = list(next(iter(groups.values()))["ci"]) if groups else []
            rows = [[value, str(g["num_examples"])] + [_fmt_ci(g["ci"][m]) for m in metric_names]
                    for value, g in groups.items()]
            blocks.append(f"Subgroups by {key}: {name}\n"
                          + text_table([key, "n"] + metric_names, rows))
    runs = report.get("runs")
    if runs:
        names = list(runs["summary"])
        metric_names = list(next(iter(runs["summary"].values())))
        rows = [[m] + [_fmt_mean_std(runs["summary"][n].get(m)) for n in names]
                for m in metric_names]
        blocks.append("Repeated runs: mean ± std (n)\n" + text_table(["metric"] + names, rows))
        for test in runs["ttests"]:
            rows = [[m, _fmt(t and t["mean_diff"]), _fmt(t and t["t"]), _fmt(t and t["p_value"]),
                     "*" if t and t["significant"] else ""] for m, t in test["metrics"].items()]
            blocks.append(f"t-test {test['b']} vs {test['a']}\n"
                          + text_table(["metric", "mean diff", "t", "p", "sig"], rows))
    return "\n\n".join(blocks)


def text_table(header: list[str], rows: list[list[str]], rule: bool = True) -> str:
    """Left-aligned columns two spaces apart; `rule`: a line of dashes under the header."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in [header] + rows]
    if rule:
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
        return metrics.finite(obj)
    return obj
