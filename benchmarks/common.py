"""Shared helpers for the benchmark scripts: one JSON line per result, memory, timing, context.

Every benchmark prints machine-readable JSON lines so results can be collected with `grep '^{'`
and compared across runs; the context fields (load, threads, versions) are there because timings
on a shared 2-core machine mean little without them.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

# Benchmarks import simclr_med from the checkout without installing it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

GIB = 1024**3


def emit(record: dict) -> dict:
    """Prints `record` as one JSON line (floats rounded for readability) and returns it."""
    def tidy(v):
        if isinstance(v, float):
            return round(v, 4)
        if isinstance(v, dict):
            return {k: tidy(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [tidy(x) for x in v]
        return v

    print(json.dumps({k: tidy(v) for k, v in record.items()}), flush=True)
    return record


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (GIB if sys.platform == "darwin" else GIB / 1024)


def current_rss_gib() -> float:
    try:
        import psutil
    except ImportError:
        return float("nan")
    return psutil.Process().memory_info().rss / GIB


def load_average() -> list[float]:
    """1/5/15-minute load averages: how busy the machine was while we timed it."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def time_repeated(fn: Callable[[], object], *, repeats: int, warmup: int = 0) -> list[float]:
    """Wall times (s) of `repeats` calls of `fn` after `warmup` untimed calls.

    `fn` must block until its work is done (e.g. return a numpy value, not a pending tensor).
    """
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(xs) -> float:
    return float(statistics.median(xs))


def set_threads(intra_op: int = 0, inter_op: int = 0) -> None:
    """TF thread pools (0 = TF's default); must run before TF executes any op."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


def add_onednn_flag(parser) -> None:
    parser.add_argument(
        "--onednn", choices=["1", "0", "tf"], default="1",
        help="TF_ENABLE_ONEDNN_OPTS: 1 as run.py sets it, 0 Eigen kernels, tf TensorFlow's own choice")


def apply_onednn_flag(value: str) -> None:
    """Sets the kernels' environment variable; TensorFlow reads it once, so call before importing it."""
    if value == "tf":
        os.environ.pop("TF_ENABLE_ONEDNN_OPTS", None)
    else:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = value


_ENV_FLAGS = (
    "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
    "KMP_BLOCKTIME", "MALLOC_ARENA_MAX", "LD_PRELOAD", "TF_MKL_ALLOC_MAX_BYTES", "TF_CPU_ALLOCATOR_USE_BFC",
    "TF_CPU_BFC_MEM_LIMIT_IN_MB",
)


def environment() -> dict:
    """Versions, thread settings and the environment flags that change TF's CPU kernels."""
    import keras
    import tensorflow as tf

    from simclr_med.models.conv import onednn_enabled

    return {
        "onednn": onednn_enabled(),
        "tf": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "env": {k: os.environ[k] for k in _ENV_FLAGS if k in os.environ},
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def device_peak_memory_gib() -> float | None:
    """Peak memory of GPU:0 since start, or None without a GPU."""
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / GIB


def host_tensor_peak_gib() -> float | None:
    """Peak bytes of live tensors in TensorFlow's CPU allocator, where it keeps count (oneDNN's does).

    Peak RSS is this plus the runtime and whatever of the allocator's pool a step has touched.
    """
    import tensorflow as tf

    try:
        return tf.config.experimental.get_memory_info("CPU:0")["peak"] / GIB
    except (ValueError, RuntimeError):
        return None
