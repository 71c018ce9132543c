"""Input: TFDS datasets of cases, augmentation, the MICLe pair sampler, tf.data pipelines, the demo data."""
