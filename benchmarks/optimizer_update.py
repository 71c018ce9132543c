"""Time of one optimizer update over the weights of a ResNet + projection head.

The update is memory-bound (a few passes over every weight, momentum and gradient), so its cost
is the number of passes each optimizer makes; this isolates it from the rest of the step.

    python benchmarks/optimizer_update.py --depth 50 --optimizers lars sgd adam

Prints one JSON line per optimizer (milliseconds, median of --repeats).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402


def update_ms(name: str, variables, grads, repeats: int) -> float:
    import tensorflow as tf

    from simclr_med.train.optimizers import build_optimizer

    optimizer = build_optimizer(name, 0.1, weight_decay=1e-6)
    step = tf.function(lambda: optimizer.apply(grads, variables))
    # Reading a weight back waits for the update to finish.
    times = common.time_repeated(lambda: (step(), variables[0].numpy()), repeats=repeats, warmup=3)
    return 1e3 * common.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--width", type=int, default=1)
    p.add_argument("--optimizers", nargs="+", default=["lars", "sgd", "adam"])
    p.add_argument("--repeats", type=int, default=10)
    common.add_onednn_flag(p)
    args = p.parse_args(argv)
    common.apply_onednn_flag(args.onednn)
    import tensorflow as tf

    from simclr_med.config import Config
    from simclr_med.models import heads, resnet

    encoder = resnet.build_resnet(args.depth, args.width, input_shape=(64, 64, 3))
    head = heads.build_projection_head(encoder.output_shape[-1], num_layers=Config.num_proj_layers,
                                       out_dim=Config.proj_out_dim)
    variables = encoder.trainable_variables + head.trainable_variables
    grads = [tf.random.stateless_normal(v.shape, seed=(i, 0)) * 1e-2 for i, v in enumerate(variables)]
    for name in args.optimizers:
        common.emit({"benchmark": "optimizer_update", "optimizer": name, "depth": args.depth,
                     "width": args.width, "variables": len(variables),
                     "weights_millions": sum(v.shape.num_elements() for v in grads) / 1e6,
                     "update_ms": update_ms(name, variables, grads, args.repeats),
                     "load_avg": common.load_average(), **common.environment()})


if __name__ == "__main__":
    main()
