"""Figures: label-efficiency curves from result.json files, t-SNE of learned embeddings.

    python -m simclr_med.evaluation.plots label-efficiency runs/*_ft*/result.json --metric top1_accuracy \
        --output curve.png
    python -m simclr_med.evaluation.plots tsne runs/ft/predictions.npz --output tsne.png

Figures are drawn on a bare matplotlib Figure (Agg canvas), so importing this module never
touches pyplot's global backend.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict
from collections.abc import Sequence
from io import BytesIO

import numpy as np
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from simclr_med import io
from simclr_med.errors import DataError, storage_errors
from simclr_med.evaluation.metrics import load_result

RESULT_FILE_KEY = "result_file"  # added by load_results so errors can name the file
# Below this many points exact t-SNE is faster than Barnes-Hut, whose threads mostly wait.
EXACT_TSNE_MAX_POINTS = 500


# ---------------------------------------------------------------- label efficiency

EMPTY_LABELS = {"init_checkpoint": "random init"}  # an empty field, in a legend


def load_results(paths: Sequence[str]) -> list[dict]:
    """Read result.json files (flat dicts); each gets its path under RESULT_FILE_KEY."""
    return [{**load_result(path), RESULT_FILE_KEY: str(path)} for path in paths]


def default_group_by(results: Sequence[dict]) -> list[str]:
    """Group by `init` when every result names it, else by `init_checkpoint` (what a run's
    result.json records it started from: seeds and label fractions of one init form one curve),
    else one group."""
    for field in ("init", "init_checkpoint"):
        if results and all(field in r for r in results):
            return [field]
    return []


def label_efficiency_data(results: Sequence[dict], metric: str, x: str = "label_fraction",
                          group_by: Sequence[str] | None = None) -> dict[str, dict]:
    """{group label: {"x", "mean", "std", "n"}} with x ascending; std is the sample std.

    Results with the metric undefined (None) are skipped with a warning.
    """
    if not results:
        raise ValueError("no results to plot")
    group_by = default_group_by(results) if group_by is None else list(group_by)
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, result in enumerate(results):
        source = result.get(RESULT_FILE_KEY, f"result #{i}")
        for field in [metric, x] + group_by:
            if field not in result:
                fields = sorted(k for k in result if k != RESULT_FILE_KEY)
                raise ValueError(f"{source}: no field {field!r} (has {fields})")
        if result[metric] is None:
            warnings.warn(f"{source}: {metric} is undefined; skipped", RuntimeWarning,
                          stacklevel=2)
            continue
        try:
            point = float(result[x]), float(result[metric])
        except (TypeError, ValueError):
            raise ValueError(f"{source}: {x}={result[x]!r} and {metric}={result[metric]!r} "
                             "must be numbers") from None
        label = ", ".join(f"{result[f]}" if result[f] not in ("", None) else EMPTY_LABELS.get(f, "(none)")
                          for f in group_by) or metric
        values[label][point[0]].append(point[1])
    return {label: _summarise(by_x) for label, by_x in sorted(values.items())}


def _summarise(by_x: dict[float, list[float]]) -> dict:
    xs = sorted(by_x)
    return {"x": xs,
            "mean": [float(np.mean(by_x[v])) for v in xs],
            "std": [float(np.std(by_x[v], ddof=1)) if len(by_x[v]) > 1 else 0.0 for v in xs],
            "n": [len(by_x[v]) for v in xs]}


def plot_label_efficiency(results: Sequence[dict], metric: str, output: str,
                          x: str = "label_fraction", group_by: Sequence[str] | None = None,
                          title: str = "") -> dict[str, dict]:
    """Metric against label fraction, one line per group, error bars = std over runs."""
    data = label_efficiency_data(results, metric, x, group_by)
    percent = x == "label_fraction" and all(v <= 1 for d in data.values() for v in d["x"])
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for label, d in data.items():
        xs = np.asarray(d["x"]) * (100 if percent else 1)
        ax.errorbar(xs, d["mean"], yerr=d["std"], marker="o", capsize=3, label=label)
    ax.set_xlabel(f"{x.replace('_', ' ')}{' (%)' if percent else ''}")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {x.replace('_', ' ')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, output)
    return data


# ---------------------------------------------------------------- t-SNE

def tsne_embedding(embeddings, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of `embeddings` [N, D]; perplexity capped at (N-1)/3 so tiny N still runs."""
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or len(embeddings) < 2 or embeddings.shape[1] < 2:
        raise ValueError(f"t-SNE needs embeddings [N >= 2, D >= 2], got {embeddings.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("t-SNE: embeddings contain NaN or inf")
    perplexity = min(perplexity, max(1.0, (len(embeddings) - 1) / 3))
    method = "exact" if len(embeddings) <= EXACT_TSNE_MAX_POINTS else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                method=method, random_state=seed).fit_transform(embeddings)


def plot_tsne(embeddings, groups: Sequence[str], output: str, perplexity: float = 30.0,
              seed: int = 0, title: str = "") -> np.ndarray:
    """Scatter of the t-SNE of `embeddings`, one colour per value of `groups`; returns [N, 2]."""
    groups = np.asarray(groups).astype(str)
    if len(groups) != len(embeddings):
        raise ValueError(f"t-SNE: {len(groups)} labels for {len(embeddings)} embeddings")
    points = tsne_embedding(embeddings, perplexity, seed)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    names = sorted(set(groups))
    colours = _palette(len(names))
    for name, colour in zip(names, colours):
        keep = groups == name
        ax.scatter(points[keep, 0], points[keep, 1], s=8, color=colour, label=name)
    if len(names) <= 30:
        ax.legend(fontsize="x-small", markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(points)} embeddings")
    _save(fig, output)
    return points


def load_embeddings(path: str, color_by: str = "label", max_points: int = 2000,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, colour group per row) from an .npz with `embeddings`, at most max_points.

    `color_by`: "label" (class name; for multi-label the first eval task), a class name
    (multi-label: positive / negative / unlabelled), or a metadata key (`meta_<key>`).
    """
    try:
        data = io.load_npz(path)
    except ValueError as err:
        raise DataError(f"{path}: not a readable .npz ({err})") from None
    if "embeddings" not in data:
        raise DataError(f"{path}: no 'embeddings' array (has {sorted(data)})")
    try:
        groups = _colour_groups(data, color_by)
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None
    embeddings = data["embeddings"]
    if len(groups) != len(embeddings):
        raise DataError(f"{path}: {len(groups)} labels for {len(embeddings)} embeddings")
    if len(embeddings) > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(len(embeddings), max_points, False))
        embeddings, groups = embeddings[rows], groups[rows]
    return embeddings, groups


def _colour_groups(data: dict, color_by: str) -> np.ndarray:
    class_names = [str(c) for c in data.get("class_names", [])]
    if f"meta_{color_by}" in data:
        return data[f"meta_{color_by}"].astype(str)
    if "labels" not in data:
        raise ValueError(f"no 'labels' array to colour by {color_by!r}")
    labels = data["labels"]
    if labels.ndim == 1:
        if color_by != "label":
            raise ValueError(f"cannot colour by {color_by!r}: use 'label' or a metadata key")
        if not class_names:
            return labels.astype(str)
        if labels.min() < 0 or labels.max() >= len(class_names):
            raise ValueError(f"labels outside 0..{len(class_names) - 1}")
        return np.asarray(class_names)[labels.astype(np.int64)]
    name = color_by
    if color_by == "label":
        tasks = [str(t) for t in data.get("eval_tasks", [])]
        name = next((t for t in tasks if t in class_names), class_names[0] if class_names else "")
    if name not in class_names:
        raise ValueError(f"cannot colour by {color_by!r}: not a class name {class_names} or a "
                         "metadata key")
    k = class_names.index(name)
    mask = data.get("label_mask", np.ones_like(labels))[:, k] > 0
    positive = labels[:, k] > 0.5
    return np.where(~mask, "unlabelled", np.where(positive, f"{name}: positive",
                                                  f"{name}: negative"))


# ---------------------------------------------------------------- helpers and CLI

def _palette(n: int) -> list:
    from matplotlib import colormaps
    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    return [cmap(i) for i in range(n)] if n <= 20 else [cmap(v) for v in np.linspace(0, 1, n)]


def _save(fig: Figure, output: str) -> None:
    """Renders in memory and writes through `io`, so that a plot can go to a bucket as well."""
    output = os.fspath(output)
    kind = os.path.splitext(output)[1][1:]
    if not kind:  # as matplotlib does with a name without extension: its default type, appended
        kind = fig.canvas.get_default_filetype()
        output = f"{output.rstrip('.')}.{kind}"
    buffer = BytesIO()
    fig.savefig(buffer, format=kind, dpi=120, bbox_inches="tight")
    io.write_bytes(output, buffer.getvalue())


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m simclr_med.evaluation.plots",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    curve = sub.add_parser("label-efficiency", help="metric vs label fraction per init")
    curve.add_argument("results", nargs="+", help="result.json files")
    curve.add_argument("--metric", required=True, help="metric key in result.json")
    curve.add_argument("--x", default="label_fraction", help="field on the x axis")
    curve.add_argument("--group-by", default=None, help="comma-separated result.json fields, "
                       "one line per combination (default: init, else checkpoint)")
    curve.add_argument("--title", default="")
    curve.add_argument("--output", required=True, help="PNG (or PDF/SVG) path")
    tsne = sub.add_parser("tsne", help="t-SNE of the `embeddings` in an .npz")
    tsne.add_argument("embeddings", help=".npz with `embeddings` (e.g. predictions.npz)")
    tsne.add_argument("--color-by", default="label", help="'label', a class name (multi-label) "
                      "or a metadata key")
    tsne.add_argument("--perplexity", type=float, default=30.0)
    tsne.add_argument("--max-points", type=int, default=2000, help="random subsample above this")
    tsne.add_argument("--seed", type=int, default=0)
    tsne.add_argument("--title", default="")
    tsne.add_argument("--output", required=True, help="PNG (or PDF/SVG) path")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        with storage_errors(args.output):
            if args.command == "label-efficiency":
                group_by = None if args.group_by is None else [
                    f.strip() for f in args.group_by.split(",") if f.strip()]
                data = plot_label_efficiency(load_results(args.results), args.metric, args.output,
                                             args.x, group_by, args.title)
                for label, d in data.items():
                    print(f"{label}: " + ", ".join(f"{x:g}: {m:.4f}±{s:.4f} (n={n})" for x, m, s, n
                                                   in zip(d["x"], d["mean"], d["std"], d["n"])))
            else:
                embeddings, groups = load_embeddings(args.embeddings, args.color_by,
                                                     args.max_points, args.seed)
                plot_tsne(embeddings, groups, args.output, args.perplexity, args.seed, args.title)
    except (ValueError, OSError) as err:
        print(f"plots: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
