"""Contrastive pretraining throughput: views/s, achieved FLOP/s against the matmul peak, memory.

Times the compiled train function of `simclr_med.train.factory.contrastive_model` on an in-memory
synthetic batch (so the model step alone is measured; the input pipeline has its own benchmark),
or with `--real_pipeline` on the demo dataset through `simclr_med.data.pipelines.pretrain_dataset`.
SimCLR and MICLe run the same step on the same number of views; they differ only in the input,
so `--method both` reports each (one process per method). Prints one JSON line per method.

    python benchmarks/pretrain_throughput.py --depth 50 --image_size 64 --batch_size 64

Each line carries the reference (google-research/simclr at ResNet-50, 64 px, batch 64, fp32 on
2 cores) and the target from the constants below; README's Performance section has the figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common  # noqa: E402
from simclr_med import tf_env  # noqa: E402

REFERENCE_VIEWS_PER_S = 58.4
TARGET_VIEWS_PER_S = 82.0
REFERENCE_PEAK_RSS_GIB = 2.7


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=50)
    p.add_argument("--width", type=int, default=1)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=64, help="global batch (examples; 2x views)")
    p.add_argument("--precision", default="float32", choices=["float32", "mixed_bfloat16", "mixed_float16"])
    p.add_argument("--method", default="simclr", choices=["simclr", "micle", "both"])
    p.add_argument("--optimizer", default="lars", choices=["lars", "sgd", "adam"])
    p.add_argument("--strategy", default="default", choices=["default", "mirrored"])
    p.add_argument("--num_logical_devices", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="timed executions")
    p.add_argument("--warmup", type=int, default=5, help="untimed executions (tracing included)")
    p.add_argument("--steps_per_execution", type=int, default=1)
    p.add_argument("--xla", action="store_true", help="jit_compile the train step")
    p.add_argument("--winograd", type=int, choices=[0, 1], default=1,
                   help="Winograd 3x3 convolutions (Config.winograd)")
    p.add_argument("--intra_op_threads", type=int, default=0, help="0: TF default")
    p.add_argument("--inter_op_threads", type=int, default=0, help="0: TF default")
    p.add_argument("--host_memory_limit_gib", type=float, default=0.0,
                   help="cap TensorFlow's CPU tensor pool (run.py's flag of that name); 0: none")
    common.add_onednn_flag(p)
    p.add_argument("--peak_gflops", type=float, default=0.0,
                   help="matmul peak to compare with; 0 measures it after the run (same load)")
    p.add_argument("--real_pipeline", action="store_true",
                   help="feed simclr_med.data.pipelines.pretrain_dataset on the demo dataset")
    p.add_argument("--data_dir", default="", help="TFDS dir for --real_pipeline (default: a temp dir)")
    return p.parse_args(argv)


# --- FLOPs ------------------------------------------------------------------------------------

def layer_flops(layer) -> int:
    """Forward FLOPs (2 per multiply-add) of the matmul-like layers; everything else is ignored.

    BN, ReLU, pooling and adds are memory-bound and a negligible share of ResNet-50's FLOPs;
    leaving them out makes "fraction of the matmul peak" a fair comparison.
    """
    import keras

    if isinstance(layer, keras.layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1] // layer.groups
        return 2 * h * w * c_out * kh * kw * c_in
    if isinstance(layer, keras.layers.Dense):
        return 2 * layer.input.shape[-1] * layer.units
    if isinstance(layer, keras.Model):
        return sum(layer_flops(sub) for sub in layer.layers)
    return 0


def forward_flops_per_view(
    depth: int, width: int, image_size: int, *, proj_layers: int, proj_dim: int
) -> int:
    """Encoder + projection head forward FLOPs for one image, counted on fixed-shape copies."""
    from simclr_med.models import heads, resnet

    enc = resnet.build_resnet(depth, width, input_shape=(image_size, image_size, 3))
    head = heads.build_projection_head(enc.output_shape[-1], num_layers=proj_layers, out_dim=proj_dim)
    return layer_flops(enc) + layer_flops(head)


# --- data -------------------------------------------------------------------------------------

def synthetic_dataset(batch_size: int, image_size: int, seed: int = 0):
    """One fixed random batch of two views, repeated: no input cost inside the timed step."""
    import tensorflow as tf

    shape = (batch_size, image_size, image_size, 3)
    batch = {"view1": tf.random.stateless_uniform(shape, seed=(seed, 1)),
             "view2": tf.random.stateless_uniform(shape, seed=(seed, 2))}
    return tf.data.Dataset.from_tensors(batch).repeat().prefetch(2)


def demo_pipeline(method: str, batch_size: int, image_size: int, data_dir: str):
    try:
        from simclr_med.data import datasets, pipelines
    except ImportError as e:
        raise SystemExit(
            f"--real_pipeline needs simclr_med.data.datasets and simclr_med.data.pipelines: {e}") from e
    ds, _ = datasets.load("demo", "train", data_dir=data_dir)
    return pipelines.pretrain_dataset(ds, method=method, batch_size=batch_size, image_size=image_size,
                                      augmentation="simclr")


# --- timing -----------------------------------------------------------------------------------

def time_train_function(model, dataset, strategy, *, steps: int, warmup: int) -> dict:
    """Times `steps` calls of the compiled train function after `warmup` calls.

    Each call runs `steps_per_execution` steps; reading the loss back blocks until it finished.
    Returns wall times per call, process CPU seconds per call (less sensitive to other processes
    on the machine than wall time) and the RSS growth over the timed calls (a leak shows here).
    """
    import time

    model.make_train_function()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))

    def one_call():
        logs = model.train_function(iterator)
        return float(logs["contrast_loss"])

    common.time_repeated(one_call, repeats=warmup)
    rss_before, cpu_before = common.current_rss_gib(), time.process_time()
    times = common.time_repeated(one_call, repeats=steps)
    return {"times": times, "cpu_s": (time.process_time() - cpu_before) / steps,
            "rss_growth_gib": common.current_rss_gib() - rss_before}


def run(args) -> dict:
    """Times one method's step in this process; its peak RSS is this process's high-water mark."""
    load_at_start = common.load_average()
    common.set_threads(args.intra_op_threads, args.inter_op_threads)
    from simclr_med.config import Config
    from simclr_med.train import factory
    from simclr_med.train import strategy as strategy_lib

    strategy = strategy_lib.make_strategy(args.strategy, num_logical_devices=args.num_logical_devices)
    factory.set_precision(args.precision)
    flops_fwd = forward_flops_per_view(args.depth, args.width, args.image_size,
                                       proj_layers=Config.num_proj_layers, proj_dim=Config.proj_out_dim)
    cfg = Config(method=args.method, resnet_depth=args.depth, width_multiplier=args.width,
                 image_size=args.image_size, train_batch_size=args.batch_size,
                 optimizer=args.optimizer, precision=args.precision, use_xla=args.xla,
                 winograd=bool(args.winograd), steps_per_execution=args.steps_per_execution,
                 train_steps=10**6)
    with strategy.scope():
        model = factory.contrastive_model(cfg, num_train_examples=10**6,
                                          num_replicas=strategy.num_replicas_in_sync)
    with tempfile.TemporaryDirectory(prefix="simclr_med_bench_") as scratch:
        if args.real_pipeline:
            dataset = demo_pipeline(args.method, args.batch_size, args.image_size, args.data_dir or scratch)
        else:
            dataset = synthetic_dataset(args.batch_size, args.image_size)
        timing = time_train_function(model, dataset, strategy, steps=args.steps, warmup=args.warmup)
    peak_rss, tensor_peak = common.peak_rss_gib(), common.host_tensor_peak_gib()  # before the matmul probe
    times = timing["times"]
    step_s = common.median(times) / args.steps_per_execution
    views = 2 * args.batch_size
    achieved_gflops = 3 * flops_fwd * views / step_s / 1e9
    peak = args.peak_gflops or measure_peak()
    return common.emit({
        "benchmark": "pretrain_throughput", "method": args.method,
        "input": "demo_pipeline" if args.real_pipeline else "synthetic",
        "depth": args.depth, "width": args.width, "image_size": args.image_size,
        "batch_size": args.batch_size, "precision": args.precision, "optimizer": args.optimizer,
        "strategy": args.strategy, "replicas": strategy.num_replicas_in_sync,
        "steps_per_execution": args.steps_per_execution, "xla": args.xla, "winograd": bool(args.winograd),
        "host_memory_limit_gib": args.host_memory_limit_gib,
        "views_per_s": views / step_s, "step_s": step_s,
        "step_s_min": min(times) / args.steps_per_execution,
        "step_s_max": max(times) / args.steps_per_execution,
        # Best step: the least disturbed by other processes on a shared machine.
        "views_per_s_best": views * args.steps_per_execution / min(times),
        "cpu_s_per_step": timing["cpu_s"] / args.steps_per_execution,
        "train_gflop_per_view": 3 * flops_fwd / 1e9,
        "achieved_gflops": achieved_gflops,
        "matmul_peak_gflops": peak, "fraction_of_peak": achieved_gflops / peak,
        "target_views_per_s": TARGET_VIEWS_PER_S, "reference_views_per_s": REFERENCE_VIEWS_PER_S,
        "peak_rss_gib": peak_rss, "reference_peak_rss_gib": REFERENCE_PEAK_RSS_GIB,
        "rss_growth_gib": timing["rss_growth_gib"], "host_tensor_peak_gib": tensor_peak,
        "device_peak_gib": common.device_peak_memory_gib(),
        "load_avg_start": load_at_start, "load_avg": common.load_average(), **common.environment(),
    })


def measure_peak() -> float:
    from benchmarks.matmul_peak import measure_matmul_peak

    return measure_matmul_peak(sizes=(2048, 3072), repeats=5)["gflops"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.method == "both":  # one process per method, so each reports its own peak RSS
        import subprocess

        for method in ("simclr", "micle"):
            subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--method", method], check=True)
        return
    common.apply_onednn_flag(args.onednn)
    tf_env.limit_host_memory(args.host_memory_limit_gib)
    run(args)


if __name__ == "__main__":
    main()
