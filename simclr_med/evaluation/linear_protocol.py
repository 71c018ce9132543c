"""Linear-evaluation protocol on precomputed embeddings (as in the DVME paper).

Small / Medium / Full subtasks differ only in how many labelled examples per class the linear
layer sees (class-balanced samples, nested so that S ⊂ M ⊂ F). Each subtask is 5-fold
cross-validated; the fold models' test probabilities are averaged, so the reported test figure
does not depend on one lucky split. Metrics: macro one-vs-rest AUC, accuracy and, for graded
labels such as diabetic-retinopathy grades, Cohen's kappa with quadratic weights.

CLI:
    python -m simclr_med.evaluation.linear_protocol \\
        --embeddings train.npz --test test.npz --output result.json
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import roc_auc_score

from simclr_med import io
from simclr_med.errors import DataError, StorageError, storage_errors
from simclr_med.evaluation import metrics

DEFAULT_SIZES = {"S": 10, "M": 100, "F": None}  # examples per class; None = all


# ----------------------------------------------------------------------------- sampling
def balanced_subset(labels: np.ndarray, n_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of up to `n_per_class` examples of every class (all when None).

    The per-class order is one fixed permutation per seed, so smaller subsets are nested in
    larger ones and subtasks differ only in size.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        picked.append(idx if n_per_class is None else idx[:n_per_class])
    return np.sort(np.concatenate(picked))


def stratified_folds(labels: np.ndarray, k: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k (train, validation) index pairs; validation parts are disjoint and cover all examples.

    Each class is dealt round-robin over the folds, so classes rarer than k still land in some
    validation fold instead of making the split fail.
    """
    labels = np.asarray(labels)
    if len(labels) < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} examples, got {len(labels)}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = (np.arange(len(idx)) + offset) % k
        offset += len(idx)  # continue dealing where the last class stopped: balanced fold sizes
    return [(np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(k)]


def oversample(indices: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices with rarer classes resampled (with replacement) up to the largest class's count."""
    indices = np.asarray(indices)
    y = np.asarray(labels)[indices]
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    target = counts.max()
    out = [indices]
    for c, n in zip(classes, counts):
        if n < target:
            out.append(rng.choice(indices[y == c], size=target - n, replace=True))
    return rng.permutation(np.concatenate(out))


# ----------------------------------------------------------------------------- metrics
def macro_auc(y_true, probs) -> float:
    """Macro one-vs-rest AUC over the classes that have both positives and negatives."""
    y_true = np.asarray(y_true)
    aucs = [
        roc_auc_score(y_true == c, probs[:, c])
        for c in range(probs.shape[1])
        if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(aucs)) if aucs else float("nan")


def _or_none(value: float) -> float | None:
    """NaN (AUC undefined: one class only) → None, which JSON can represent."""
    return None if np.isnan(value) else value


# ----------------------------------------------------------------------------- linear models
class _KerasLinear:
    """Softmax Dense layer; Adam with Keras's plateau and early-stopping callbacks.

    Built for speed on small data: a whole epoch is one traced function (per-step Python
    overhead, as in `fit` or `train_on_batch`, costs far more than a step of a linear layer), and
    one model serves every fold, its weights and optimizer state restored from a snapshot, so
    that the epoch is traced only once.
    """

    def __init__(self, dim, num_classes, *, learning_rate, epochs, batch_size, patience, seed):
        keras.utils.set_random_seed(seed)
        self.model = keras.Sequential([
            keras.Input(shape=(dim,)),
            keras.layers.Dense(num_classes, activation="softmax", name="linear"),
        ])
        self.model.optimizer = keras.optimizers.Adam(learning_rate)
        self.model.optimizer.build(self.model.trainable_variables)
        self._variables = self.model.variables + self.model.optimizer.variables
        self._snapshot = [v.numpy() for v in self._variables]
        self.epochs, self.batch_size, self.patience = epochs, batch_size, patience
        x_spec = tf.TensorSpec([None, dim], tf.float32)
        y_spec = tf.TensorSpec([None], tf.int64)
        self._train_epoch = tf.function(self._train_epoch_fn, input_signature=[x_spec, y_spec, y_spec])
        self._loss = tf.function(self._loss_fn, input_signature=[x_spec, y_spec])

    def _loss_fn(self, x, y):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, self.model(x)))

    def _train_epoch_fn(self, x, y, order):
        weights = self.model.trainable_variables
        for start in tf.range(0, tf.size(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            with tf.GradientTape() as tape:
                loss = self._loss_fn(tf.gather(x, batch), tf.gather(y, batch))
            self.model.optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights))

    def fit(self, x_tr, y_tr, x_val, y_val, seed):
        """Train from the initial state on one fold; returns a probability function."""
        model = self.model
        for var, value in zip(self._variables, self._snapshot):
            var.assign(value)
        model.stop_training = False
        callbacks = keras.callbacks.CallbackList([
            keras.callbacks.ReduceLROnPlateau(factor=0.1, patience=max(1, self.patience // 2)),
            keras.callbacks.EarlyStopping(patience=self.patience, restore_best_weights=True),
        ], model=model)
        rng = np.random.default_rng(seed)
        x_tr, y_tr = tf.constant(x_tr), tf.constant(y_tr)
        x_val, y_val = tf.constant(x_val), tf.constant(y_val)
        callbacks.on_train_begin()
        for epoch in range(self.epochs):
            self._train_epoch(x_tr, y_tr, tf.constant(rng.permutation(len(y_tr))))
            callbacks.on_epoch_end(epoch, {"val_loss": float(self._loss(x_val, y_val))})
            if model.stop_training:
                break
        callbacks.on_train_end()
        kernel, bias = model.get_weights()  # copies: later folds retrain the same variables

        def predict(x):
            logits = x @ kernel + bias
            e = np.exp(logits - logits.max(1, keepdims=True))
            return (e / e.sum(1, keepdims=True)).astype(np.float32)

        return predict


def _fit_sklearn(x_tr, y_tr, num_classes, *, seed, max_iter):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=max_iter, random_state=seed).fit(x_tr, y_tr)

    def predict(x):  # scatter into all classes: a fold may lack a rare class entirely
        probs = np.zeros((len(x), num_classes), np.float32)
        probs[:, clf.classes_] = clf.predict_proba(x)
        return probs

    return predict


def _check(x, y, what):
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2 or len(x) == 0:
        raise DataError(f"{what}: embeddings must be [N, D] with N > 0, got shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{what}: labels must be [N] with N={len(x)}, got shape {y.shape}")
    if not np.all(np.isfinite(x)):
        first_bad = int(np.argwhere(~np.isfinite(x))[0, 0])
        raise DataError(f"{what}: embeddings contain NaN or inf (row {first_bad})")
    if y.dtype.kind == "f" and not np.all(y == np.round(y)):
        raise DataError(f"{what}: labels must be integer class indices")
    if len(y) and y.min() < 0:
        raise DataError(f"{what}: labels must be >= 0, found {int(y.min())}")
    return x.astype(np.float32), y.astype(np.int64)


def evaluate_subtask(
    x_train, y_train, x_test, y_test, *, num_classes: int, folds: int = 5, model: str = "keras",
    graded: bool = False, balance: bool = True, standardize: bool = True, seed: int = 0,
    learning_rate: float = 1e-2, epochs: int = 200, batch_size: int = 64, patience: int = 10,
    max_iter: int = 1000,
) -> dict:
    """k-fold linear evaluation of one training set; returns JSON-friendly metrics on the test set."""
    if model not in ("keras", "sklearn"):
        raise ValueError(f"linear model {model!r} is not one of keras, sklearn")
    if model == "keras":
        linear = _KerasLinear(x_train.shape[1], num_classes, learning_rate=learning_rate,
                              epochs=epochs, batch_size=batch_size, patience=patience, seed=seed)
    fold_probs, fold_val_auc = [], []
    for f, (tr, va) in enumerate(stratified_folds(y_train, folds, seed)):
        if balance:
            tr = oversample(tr, y_train, seed + f)
        x_tr, x_va, x_te = x_train[tr], x_train[va], x_test
        if standardize:  # frozen features have arbitrary scales; fold-train statistics only
            mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
            x_tr, x_va, x_te = (x_tr - mean) / std, (x_va - mean) / std, (x_te - mean) / std
        if model == "keras":
            predict = linear.fit(x_tr, y_train[tr], x_va, y_train[va], seed=seed + f)
        else:
            predict = _fit_sklearn(x_tr, y_train[tr], num_classes, seed=seed + f, max_iter=max_iter)
        fold_val_auc.append(macro_auc(y_train[va], predict(x_va)))
        fold_probs.append(predict(x_te))
    probs = np.mean(fold_probs, axis=0)
    pred = probs.argmax(1)
    result = {
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "class_counts": np.bincount(y_train, minlength=num_classes).tolist(),
        "auc": _or_none(macro_auc(y_test, probs)),
        "accuracy": float(np.mean(pred == y_test)),
        "fold_test_auc": [_or_none(macro_auc(y_test, p)) for p in fold_probs],
        "fold_val_auc": [_or_none(v) for v in fold_val_auc],
    }
    if graded:
        result["kappa"] = metrics.cohen_kappa_quadratic(y_test, pred, num_classes)
    return result


def run_protocol(
    x_train, y_train, x_test, y_test, *,
    sizes: Mapping[str, int | None] = DEFAULT_SIZES, folds: int = 5, seed: int = 0, **kwargs,
) -> dict:
    """All subtasks: {name: metrics} with `n_per_class` added; `kwargs` go to evaluate_subtask."""
    x_train, y_train = _check(x_train, y_train, "training set")
    x_test, y_test = _check(x_test, y_test, "test set")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"embedding widths differ: training {x_train.shape[1]}, test {x_test.shape[1]}")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    results = {}
    for name, n_per_class in sizes.items():
        idx = balanced_subset(y_train, n_per_class, seed)
        scores = evaluate_subtask(x_train[idx], y_train[idx], x_test, y_test,
                                   num_classes=num_classes, folds=folds, seed=seed, **kwargs)
        results[name] = {"n_per_class": n_per_class, **scores}
    return results


# ----------------------------------------------------------------------------- CLI
def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """`embeddings` [N, D] and `labels` [N] from an .npz file, with the file named on errors."""
    if not io.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        data = io.load_npz(path)
    except Exception as e:  # noqa: BLE001 — any unreadable file gets the same one-line error
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    missing = [k for k in ("embeddings", "labels") if k not in data]
    if missing:
        raise DataError(f"{path}: missing array(s) {missing}; found {list(data)}")
    return _check(data["embeddings"], data["labels"], path)


def _size(text: str) -> int | None:
    return None if text.lower() in ("all", "none") else int(text)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--embeddings", required=True,
                   help=".npz with `embeddings` [N,D], `labels` [N] (training pool)")
    p.add_argument("--test", required=True, help=".npz of the fixed test set, same keys")
    p.add_argument("--output", required=True, help="where to write the JSON result")
    p.add_argument("--small", type=_size, default=DEFAULT_SIZES["S"], help="examples per class for S")
    p.add_argument("--medium", type=_size, default=DEFAULT_SIZES["M"], help="examples per class for M")
    p.add_argument("--full", type=_size, default=None, help="examples per class for F ('all')")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--model", choices=("keras", "sklearn"), default="keras")
    p.add_argument("--graded", action="store_true", help="report quadratic-weighted kappa")
    p.add_argument("--no_oversample", dest="balance", action="store_false")
    p.add_argument("--learning_rate", type=float, default=1e-2)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        with storage_errors(args.output):
            x_train, y_train = load_npz(args.embeddings)
            x_test, y_test = load_npz(args.test)
            result = run_protocol(
                x_train, y_train, x_test, y_test,
                sizes={"S": args.small, "M": args.medium, "F": args.full}, folds=args.folds,
                seed=args.seed, model=args.model, graded=args.graded, balance=args.balance,
                learning_rate=args.learning_rate, epochs=args.epochs,
            )
            io.write_json(args.output, result)
    except (ValueError, StorageError) as e:
        p.exit(2, f"error: {e}\n")
    for name, r in result.items():
        if "kappa" not in r:
            kappa = ""
        else:
            kappa = "  kappa undefined" if r["kappa"] is None else f"  kappa {r['kappa']:.4f}"
        print(f"{name}: n_train {r['n_train']}  AUC {r['auc']}  acc {r['accuracy']:.4f}{kappa}")
    return result


if __name__ == "__main__":
    main()
