"""Turning a Config into trained weights.

`lars`, `schedules`, `optimizers`, `factory` (Config → compiled model), `loop` (fit with checkpoint,
non-finite and TensorBoard callbacks), `checkpoints` (save, resume, restore; `simclr_tf1` reads the
released SimCLR checkpoints), `strategy` (the one place a tf.distribute strategy is chosen).
"""
