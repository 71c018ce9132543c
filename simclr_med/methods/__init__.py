"""Related methods built from whole runs: above `experiment`, below `run.py`.

`sweep` (the fine-tuning LR × weight-decay grid), `transfer` (initialisations × tasks × seeds),
`dvme` (fused frozen embeddings), `segmentation` (U-Net with the ResNet encoder).
"""
