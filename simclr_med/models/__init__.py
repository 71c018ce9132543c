"""Networks and the keras.Models that train them: ResNet (with its CPU kernels conv, winograd, batchnorm), projection head, NT-Xent, U-Net, SavedModel export."""
