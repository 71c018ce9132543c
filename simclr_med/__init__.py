"""simclr-med: SimCLR / MICLe self-supervised pretraining for medical image classification."""
