"""DVME: dynamic visual meta-embedding over several frozen encoders.

Each encoder's embedding is projected to a common width and treated as one token; a ViT-style
self-attention block lets the classifier weigh the encoders per example instead of with one fixed
concatenation. `attention=False` is the paper's ablation: the same projections, concatenated.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import layers


def _embedding_names(embedding_dims) -> list[str]:
    if isinstance(embedding_dims, Mapping):
        return list(embedding_dims)
    return [f"embedding_{i}" for i in range(len(embedding_dims))]


def _as_list(embeddings, names):
    """Dict or sequence of arrays → list in the model's input order."""
    if isinstance(embeddings, Mapping):
        missing = [n for n in names if n not in embeddings]
        if missing:
            raise ValueError(f"DVME inputs lack embeddings {missing}; expected keys {names}")
        return [embeddings[n] for n in names]
    embeddings = list(embeddings)
    if len(embeddings) != len(names):
        raise ValueError(f"DVME expects {len(names)} embeddings, got {len(embeddings)}")
    return embeddings


def _attention_block(tokens, dim, num_heads, mlp_ratio, dropout, name):
    """Pre-LN transformer encoder block as in ViT: x + MHA(LN(x)), then x + MLP(LN(x))."""
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln1")(tokens)
    y = layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=dim // num_heads, dropout=dropout, name=f"{name}_mha")(y, y)
    x = layers.Add(name=f"{name}_res1")([tokens, y])
    y = layers.LayerNormalization(epsilon=1e-6, name=f"{name}_ln2")(x)
    y = layers.Dense(dim * mlp_ratio, activation="gelu", name=f"{name}_mlp1")(y)
    y = layers.Dropout(dropout, name=f"{name}_mlp_drop")(y)
    y = layers.Dense(dim, name=f"{name}_mlp2")(y)
    return layers.Add(name=f"{name}_res2")([x, y])


def build_dvme(
    embedding_dims: Sequence[int] | Mapping[str, int],
    num_classes: int,
    *,
    multi_label: bool = False,
    attention: bool = True,
    dim: int = 512,
    num_heads: int = 8,
    mlp_ratio: int = 4,
    hidden_dim: int = 512,
    dropout: float = 0.2,
    attention_dropout: float = 0.0,
    name: str = "dvme",
) -> keras.Model:
    """DVME classifier over K embeddings of widths `embedding_dims` (a list, or name → width).

    Inputs are a list (or dict, when `embedding_dims` is a mapping) of [batch, width_k] arrays;
    the output is [batch, num_classes] softmax probabilities, or sigmoids when `multi_label`.
    `attention_dropout` applies inside the attention block (attention weights and its MLP),
    `dropout` before the classifier.
    """
    names = _embedding_names(embedding_dims)
    dims = list(embedding_dims.values()) if isinstance(embedding_dims, Mapping) else list(embedding_dims)
    if not dims:
        raise ValueError("DVME needs at least one embedding")
    if any(int(d) < 1 for d in dims):
        raise ValueError(f"DVME embedding widths must be positive, got {dims}")
    if dim % num_heads:
        raise ValueError(f"DVME dim={dim} is not divisible by num_heads={num_heads}")
    if num_classes < 1:
        raise ValueError(f"DVME num_classes must be >= 1, got {num_classes}")

    inputs = [keras.Input(shape=(int(d),), name=n) for n, d in zip(names, dims)]
    projected = [layers.Dense(dim, name=f"proj_{n}")(x) for n, x in zip(names, inputs)]
    k = len(projected)
    tokens = projected[0] if k == 1 else layers.Concatenate(name="concat")(projected)
    tokens = layers.Reshape((k, dim), name="tokens")(tokens)
    if attention:
        tokens = _attention_block(tokens, dim, num_heads, mlp_ratio, attention_dropout, "block")
    x = layers.LayerNormalization(epsilon=1e-6, name="final_ln")(tokens)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(hidden_dim, activation="relu", name="hidden")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(
        num_classes, activation="sigmoid" if multi_label else "softmax", name="classifier")(x)
    model_inputs = dict(zip(names, inputs)) if isinstance(embedding_dims, Mapping) else inputs
    return keras.Model(model_inputs, outputs, name=name)


def masked_binary_crossentropy(targets, probs):
    """Binary cross-entropy averaged over each row's unmasked labels; `targets` = [labels | mask]."""
    num_classes = probs.shape[-1]
    labels, mask = targets[:, :num_classes], targets[:, num_classes:]
    per_label = keras.ops.binary_crossentropy(labels, probs)
    return keras.ops.sum(per_label * mask, -1) / keras.ops.maximum(keras.ops.sum(mask, -1), 1.0)


def _validation_split(labels, multi_label, fraction, rng, groups=None):
    """Hold-out for early stopping: whole groups when given (a patient's images on one side, or
    the validation loss flatters), else stratified (multi-class) or random (multi-label) rows."""
    n = len(labels)
    if groups is not None:
        names, index = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        chosen = rng.permutation(len(names))[: max(1, int(round(len(names) * fraction)))]
        is_val = np.isin(index, chosen)
        return np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if multi_label:
        perm = rng.permutation(n)
        n_val = max(1, int(round(n * fraction)))
        return perm[n_val:], perm[:n_val]
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.extend(idx[: int(round(len(idx) * fraction))])
    val = np.sort(np.asarray(val, dtype=np.int64))
    if len(val) == 0:
        val = rng.permutation(n)[:1]
    train = np.setdiff1d(np.arange(n), val)
    return train, val


def train_dvme(
    train_embeddings: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    train_labels: np.ndarray,
    test_embeddings: Sequence[np.ndarray] | Mapping[str, np.ndarray],
    *,
    num_classes: int | None = None,
    multi_label: bool = False,
    label_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    attention: bool = True,
    validation_fraction: float = 0.1,
    epochs: int = 100,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    patience: int = 10,
    seed: int = 0,
    verbose: int = 0,
    **model_kwargs,
) -> tuple[np.ndarray, keras.Model]:
    """Fit a DVME on frozen embeddings and return (test probabilities, model).

    Adam; the learning rate is cut ×0.1 when the held-out loss plateaus and training stops
    (restoring the best weights) when it no longer improves. Multi-label: `label_mask` [N, C]
    (embeddings.extract's) leaves out the labels it zeroes, e.g. CheXpert's uncertain ones under
    u_ignore, instead of training them as negatives. `groups` (e.g. the rows' case_ids) keeps
    each group on one side of the hold-out.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"DVME validation_fraction must be in (0, 1), got {validation_fraction}")
    labels = np.asarray(train_labels)
    names = _embedding_names(train_embeddings)
    train_list = [np.asarray(x, np.float32) for x in _as_list(train_embeddings, names)]
    test_list = [np.asarray(x, np.float32) for x in _as_list(test_embeddings, names)]
    for n, x in zip(names, train_list):
        if x.ndim != 2 or len(x) != len(labels):
            raise ValueError(f"DVME train embedding {n!r} has shape {x.shape}; expected [{len(labels)}, D]")
    for n, x, t in zip(names, train_list, test_list):
        if t.ndim != 2 or t.shape[1] != x.shape[1]:
            raise ValueError(f"DVME test embedding {n!r} has shape {t.shape}; expected [N, {x.shape[1]}]")
    dims = [x.shape[1] for x in train_list]
    if isinstance(train_embeddings, Mapping):
        dims = dict(zip(names, dims))
    if multi_label:
        if labels.ndim != 2:
            raise ValueError(f"DVME multi-label labels have shape {labels.shape}; expected [N, num_classes]")
        mask = np.ones_like(labels, np.float32) if label_mask is None else np.asarray(label_mask, np.float32)
        if mask.shape != labels.shape:
            raise ValueError(f"DVME label_mask has shape {mask.shape}; expected the labels' {labels.shape}")
        num_classes = num_classes or labels.shape[1]
        targets = np.concatenate([labels.astype(np.float32), mask], axis=1)
    else:
        labels = labels.astype(np.int64)
        num_classes = num_classes or int(labels.max()) + 1
        targets = labels
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"DVME groups has {len(groups)} entries for {len(labels)} rows")

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    tr, va = _validation_split(labels, multi_label, validation_fraction, rng, groups)
    model = build_dvme(dims, num_classes, multi_label=multi_label, attention=attention, **model_kwargs)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=masked_binary_crossentropy if multi_label else "sparse_categorical_crossentropy",
    )

    def pick(xs, idx):
        picked = [x[idx] for x in xs]
        return dict(zip(names, picked)) if isinstance(dims, Mapping) else picked

    model.fit(
        pick(train_list, tr), targets[tr],
        validation_data=(pick(train_list, va), targets[va]),
        epochs=epochs, batch_size=batch_size, verbose=verbose, shuffle=True,
        callbacks=[
            keras.callbacks.ReduceLROnPlateau(factor=0.1, patience=max(1, patience // 2)),
            keras.callbacks.EarlyStopping(patience=patience, restore_best_weights=True),
        ],
    )
    test_inputs = dict(zip(names, test_list)) if isinstance(dims, Mapping) else test_list
    probs = model.predict(test_inputs, batch_size=max(batch_size, 256), verbose=0)
    return probs, model
