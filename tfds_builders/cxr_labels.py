"""Chest X-ray label spaces (CheXpert, NIH ChestX-ray14) and CheXpert's uncertainty policies.

The builders store CheXpert's raw labels (1, 0, -1 = uncertain, NaN = not mentioned) so that one
build serves every policy; the policy is applied when the data is loaded.
"""
from __future__ import annotations

CHEXPERT_LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA") + CHEXPERT_LABELS
# The competition tasks the paper reports (mean AUC over these five).
CHEXPERT_TASKS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
POLICIES = ("mixed", "u_ones", "u_zeros", "u_ignore")
# `mixed`, the policy used in practice: U-Ones where it helps (Irvin et al. 2019), U-Zeros elsewhere.
_MIXED_U_ONES = ("Atelectasis", "Edema")

NIH_LABELS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
    "Hernia", "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
# Findings NIH ChestX-ray14 names differently (CheXpert name → NIH name); the others share their names.
NIH_ALIASES = {"Pleural Effusion": "Effusion"}
# CheXpert task → the NIH finding of the same meaning (zero-shot evaluation across datasets).
NIH_FOR_CHEXPERT = {t: NIH_ALIASES.get(t, t) for t in CHEXPERT_TASKS}
_CHEXPERT_FOR_NIH = {nih: chexpert for chexpert, nih in NIH_ALIASES.items()}


def chexpert_name(finding: str) -> str:
    """The CheXpert name of a finding named either way (Effusion → Pleural Effusion)."""
    return _CHEXPERT_FOR_NIH.get(finding, finding)


def apply_uncertainty_policy(raw, policy: str = "mixed"):
    """CheXpert's 14 raw labels `[..., 14]` → (labels, mask), each float32 `[..., 5]` over
    CHEXPERT_TASKS.

    Not mentioned (NaN) is negative under every policy. Uncertain (-1) becomes 1 (`u_ones`),
    0 (`u_zeros`), masked out (`u_ignore`: label 0, mask 0), or per task (`mixed`: 1 for
    Atelectasis and Edema, 0 for the rest).
    """
    if policy not in POLICIES:
        raise ValueError(f"uncertainty policy {policy!r} is not one of {', '.join(POLICIES)}")
    import tensorflow as tf  # here, so that the label tables load without TensorFlow

    raw = tf.convert_to_tensor(raw, tf.float32)
    tasks = tf.gather(raw, [CHEXPERT_LABELS.index(t) for t in CHEXPERT_TASKS], axis=-1)
    uncertain = tf.equal(tasks, -1.0)
    to_one = tf.constant([policy == "u_ones" or (policy == "mixed" and t in _MIXED_U_ONES)
                          for t in CHEXPERT_TASKS])
    labels = tf.cast(tf.equal(tasks, 1.0) | (uncertain & to_one), tf.float32)
    mask = tf.cast(~(uncertain & (policy == "u_ignore")), tf.float32)
    return labels, mask
