"""Networks and the keras.Models that train them.

`resnet` (built from the CPU kernels `conv`, `winograd`, `batchnorm`), `heads` (projection head),
`losses` (NT-Xent), `trainable` (ContrastiveModel and Classifier: `train_step`/`test_step` with their
loss), `unet`, `export` (the SavedModel for TF Serving). Imports only `data`.
"""
