"""Related methods built on experiment runs: the fine-tuning sweep, the transfer benchmark, DVME, U-Net segmentation."""
