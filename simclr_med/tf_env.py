"""Process settings that TensorFlow reads once, when it is imported: call `configure()` first.

oneDNN kernels are TensorFlow's default only on CPUs with AVX-512/AMX; on AVX2 CPUs they are off
by default, yet they train a ResNet-50 ~30% faster than the Eigen kernels (README, Performance).
Variables the user already set win.
"""
import os

DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "1",
}


def configure() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
