"""Forward + backward time of every distinct convolution of a ResNet, per formulation.

Compares TensorFlow's convolution kernel, im2col + matmul, the flipped-kernel input gradient and
Winograd (stride-1 3×3 only), all SAME-padded, with what `simclr_med.models.conv.convolution` picks with
the ResNet's padding (SimCLR's fixed padding at stride 2), on the layer shapes of `build_resnet`.
This is the measurement behind conv.py's choices; rerun it when TensorFlow, the CPU or the kernels
change.

    python benchmarks/conv_kernels.py --depth 50 --image_size 64 --batch 128
    python benchmarks/conv_kernels.py --onednn 0      # Eigen kernels

Prints one JSON line per shape (milliseconds, median of --repeats) and a totals line weighted by
how often each shape occurs in the network.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def conv_shapes(depth: int, image_size: int) -> collections.Counter:
    """(height, width, c_in, c_out, kernel, stride) -> number of such layers in the encoder."""
    from simclr_med.models import resnet

    encoder = resnet.build_resnet(depth, input_shape=(image_size, image_size, 3))
    shapes = collections.Counter()
    for layer in encoder.layers:
        if hasattr(layer, "kernel_size"):
            _, h, w, c_in = layer.input.shape
            shapes[(h, w, c_in, layer.filters, layer.kernel_size[0], layer.strides[0])] += 1
    return shapes


def formulations():
    import tensorflow as tf

    from simclr_med.models import conv, winograd

    def flipped(x, k, s):
        if s == 1 and k.shape[0] % 2:
            return conv.conv_forward_input_grad(x, k)
        return tf.nn.conv2d(x, k, s, "SAME")

    def winograd_where_it_applies(x, k, s):  # stride-1 3x3; else the kernel, so totals stay comparable
        if s == 1 and k.shape[0] == 3:
            return winograd.conv3x3(x, k, winograd.tile_for(x.shape[1], x.shape[2]))
        return tf.nn.conv2d(x, k, s, "SAME")

    return {
        "kernel": lambda x, k, s: tf.nn.conv2d(x, k, s, "SAME"),
        "gemm": conv.gemm_conv,
        "flipped_grad": flipped,
        "winograd": winograd_where_it_applies,
        "chosen": lambda x, k, s: conv.convolution(x, k, s, fixed=True),  # as the ResNet pads
    }


def time_shape(shape, batch: int, repeats: int) -> dict:
    import tensorflow as tf

    from simclr_med.models import conv

    h, w, c_in, c_out, k, s = shape
    x = tf.random.normal([batch, h, w, c_in])
    kernel = tf.random.normal([k, k, c_in, c_out]) * 0.05
    out_h, out_w = conv.output_size(h, s), conv.output_size(w, s)
    upstream = tf.random.normal([batch, out_h, out_w, c_out])
    row = {"shape": f"{h}x{w} {c_in}->{c_out} k{k} s{s}",
           "train_gflop": 3 * 2 * batch * out_h * out_w * c_out * k * k * c_in / 1e9}
    for name, fn in formulations().items():
        @tf.function
        def step(x, kernel, fn=fn):
            with tf.GradientTape() as tape:
                tape.watch([x, kernel])
                loss = tf.reduce_sum(fn(x, kernel, s) * upstream)
            dx, dk = tape.gradient(loss, [x, kernel])
            return tf.reduce_sum(dx) + tf.reduce_sum(dk)

        times = common.time_repeated(lambda: float(step(x, kernel)), repeats=repeats, warmup=1)
        row[name + "_ms"] = 1000 * common.median(times)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch", type=int, default=128, help="images per step (views, for pretraining)")
    p.add_argument("--repeats", type=int, default=5)
    common.add_onednn_flag(p)
    args = p.parse_args(argv)
    common.apply_onednn_flag(args.onednn)

    shapes = conv_shapes(args.depth, args.image_size)
    totals = collections.Counter()
    for shape, count in shapes.items():
        timed = time_shape(shape, args.batch, args.repeats)
        row = common.emit({"benchmark": "conv_kernels", "count": count, **timed})
        keys = ("kernel_ms", "gemm_ms", "flipped_grad_ms", "winograd_ms")
        for key in keys + ("chosen_ms",):
            totals[key] += count * row[key]
        totals["best_ms"] += count * min(row[key] for key in keys)
    common.emit({"benchmark": "conv_kernels_total", "depth": args.depth, "image_size": args.image_size,
                 "batch": args.batch, **{k: v for k, v in totals.items()}, "load_avg": common.load_average(),
                 **common.environment()})


if __name__ == "__main__":
    main()
