"""TFDS builders for the manual downloads simclr-med reads; importing this registers them.

`derm_cases` (configs generic, scin, ham10000), `chexpert_v1`, `nih_chestxray14`, `seg_masks`: each reads the
download exactly as it is unpacked (see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS).
"""
from tfds_builders.chexpert_v1 import chexpert_v1_dataset_builder
from tfds_builders.derm_cases import derm_cases_dataset_builder
from tfds_builders.nih_chestxray14 import nih_chestxray14_dataset_builder
from tfds_builders.seg_masks import seg_masks_dataset_builder

__all__ = ["chexpert_v1_dataset_builder", "derm_cases_dataset_builder", "nih_chestxray14_dataset_builder",
           "seg_masks_dataset_builder"]
