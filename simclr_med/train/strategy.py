"""The one place a `tf.distribute` strategy is chosen."""
from __future__ import annotations

import tensorflow as tf

from simclr_med.errors import ConfigError


def split_cpu(num_devices: int) -> None:
    """Splits the host CPU into logical devices, so MirroredStrategy can be exercised on a laptop.

    Must run before TensorFlow initialises its devices (i.e. before any op executes).
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
    except RuntimeError as e:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow is already "
            "initialised (call split_cpu before running any op)") from e


def make_strategy(name: str = "default", *, tpu: str = "", num_logical_devices: int = 0):
    """default: whatever TF has (one device); mirrored: all local GPUs, else logical CPUs; tpu."""
    if num_logical_devices > 1:
        split_cpu(num_logical_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "local")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}: use default, mirrored or tpu")


def check_steps_per_execution(strategy, steps_per_execution: int) -> None:
    """Refuses what Keras 3 cannot run: several steps per call on several MirroredStrategy replicas.

    Keras' multi-step loop puts the replicas' gradient merge inside a conditional, which fails
    with "You must feed a value for placeholder tensor" (keras-team/keras#19246).
    """
    if (steps_per_execution > 1 and isinstance(strategy, tf.distribute.MirroredStrategy)
            and strategy.num_replicas_in_sync > 1):
        raise ConfigError(f"--steps_per_execution={steps_per_execution} with --strategy=mirrored on "
                          f"{strategy.num_replicas_in_sync} replicas: Keras 3 cannot run several steps per "
                          "call there (keras-team/keras#19246); use --steps_per_execution=1")
