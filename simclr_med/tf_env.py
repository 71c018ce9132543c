"""Process settings that TensorFlow reads once, when it is imported: call these first.

oneDNN kernels are TensorFlow's default only on CPUs with AVX-512/AMX; on AVX2 CPUs they are off
by default, yet they train a ResNet-50 faster than the Eigen kernels (figures: README, Performance).
Variables the user already set win.
"""
import os
import sys

DEFAULTS = {
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_ENABLE_ONEDNN_OPTS": "1",
}


def configure() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


def limit_host_memory(gib: float) -> None:
    """Caps the CPU allocator's pool of tensor memory at `gib` (0: no cap).

    TensorFlow's CPU allocators are BFC pools that grow by doubling regions and never give memory
    back, so peak RSS is the runtime plus whatever of the pool a step has ever written. With two
    inter-op threads, ops run in varying orders and spread their tensors over more of the pool
    than the live tensors need; a cap a little above the live tensors keeps the speed and lowers
    the peak (README, Performance). Too small a cap fails with an out-of-memory error.
    """
    if gib <= 0:
        return
    if "tensorflow" in sys.modules:
        raise RuntimeError("limit_host_memory must run before TensorFlow is imported")
    limit = int(gib * 2**30)
    os.environ["TF_MKL_ALLOC_MAX_BYTES"] = str(limit)  # oneDNN's pool
    os.environ["TF_CPU_BFC_MEM_LIMIT_IN_MB"] = str(limit // 2**20)  # the generic pool, wherever it is used
    # Eigen kernels allocate with malloc unless asked for a pool.
    if os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
        os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "1"
