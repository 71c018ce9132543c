"""Chest X-ray label names for modules that score predictions rather than load data.

Defined in tfds_builders.cxr_labels, which the builders read too; simclr_med reads tfds_builders only
through its data room.
"""
from __future__ import annotations

from tfds_builders.cxr_labels import CHEXPERT_TASKS, chexpert_name

__all__ = ["CHEXPERT_TASKS", "chexpert_name"]
