"""TFDS builders for the manual downloads simclr-med reads.

`derm_cases` (configs generic, scin, ham10000), `chexpert_v1`, `nih_chestxray14`, `seg_masks`: each reads the
download exactly as it is unpacked (see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS). `registry` holds the
names users pick (name → builder class and config) and builds them: `builder_for(NAME, data_dir, manual_dir)`.
Importing a builder module registers it with TFDS; this file imports none of them, so that the label tables
in `cxr_labels` load without TensorFlow (the compare and plot tools read them).
"""
