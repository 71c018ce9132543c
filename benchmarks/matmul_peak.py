"""Measures the machine's fp32 matmul throughput with TensorFlow: the practical FLOP/s ceiling.

A training step can go no faster than its FLOPs at this rate, so pretraining throughput is
reported as a fraction of it. Usage: `python benchmarks/matmul_peak.py [--sizes 2048 4096]`.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def measure_matmul_peak(sizes=(2048, 3072, 4096), repeats: int = 5, device: str | None = None) -> dict:
    """Best over sizes of the median GFLOP/s of an n×n @ n×n fp32 matmul (2·n³ FLOPs each).

    The median over repeats ignores one-off stalls; the best over sizes ignores sizes that fit the
    cache or the BLAS blocking badly. Returns {"gflops", "per_size": {n: gflops}, "device"}.
    """
    import tensorflow as tf

    device = device or ("/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0")
    per_size = {}
    with tf.device(device):
        for n in sizes:
            a = tf.random.stateless_normal((n, n), seed=(1, n))
            b = tf.random.stateless_normal((n, n), seed=(2, n))
            def run(a=a, b=b):  # binds this size's matrices
                # Reading a scalar back forces the matmul to finish before the clock stops.
                return float(tf.reduce_sum(tf.matmul(a, b)))

            times = common.time_repeated(run, repeats=repeats, warmup=1)
            per_size[n] = 2.0 * n**3 / common.median(times) / 1e9
    return {"gflops": max(per_size.values()), "per_size": per_size, "device": device}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 3072, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--intra_op_threads", type=int, default=0)
    common.add_onednn_flag(parser)
    args = parser.parse_args(argv)
    common.apply_onednn_flag(args.onednn)
    common.set_threads(intra_op=args.intra_op_threads)
    result = measure_matmul_peak(tuple(args.sizes), args.repeats)
    common.emit({"benchmark": "matmul_peak", **result, "load_avg": common.load_average(),
                 **common.environment()})


if __name__ == "__main__":
    main()
