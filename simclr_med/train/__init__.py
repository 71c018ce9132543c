"""Optimisation and running: LARS, schedules, optimizers, the model factory, the training loop, checkpoints (and the TF1 importer), the distribution strategy."""
