"""`seg_masks`: paired images and segmentation masks from a manual dir."""
from tfds_builders.seg_masks.seg_masks_dataset_builder import SegMasks, SegMasksError

__all__ = ["SegMasks", "SegMasksError"]
