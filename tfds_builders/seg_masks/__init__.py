"""Generic image + mask segmentation dataset (TFDS builder `seg_masks`)."""
from tfds_builders.seg_masks.seg_masks import SegMasks, SegMasksError

__all__ = ["SegMasks", "SegMasksError"]
