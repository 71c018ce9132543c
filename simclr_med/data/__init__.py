"""Input: what a run reads, up to the batches a model consumes.

`datasets` (TFDS builds of the user's download, cases, label fractions by case), `augment` (the
SimCLR/CheXpert presets), `micle_pairs` (two different images of a case), `pipelines` (tf.data for
pretraining and supervised runs), `demo` (the synthetic demo download), `segmentation` (images with
masks), `labels` (chest X-ray label names). The only room that reads `tfds_builders`.
"""
