"""simclr-med entry point (google-research/simclr flag layout).

  python run.py --mode=train_then_eval --flagfile=flags/demo_pretrain.cfg --model_dir=/tmp/run

Flags mirror `simclr_med.config.Config` one to one; this is the only module that reads them.
"""
import dataclasses
import logging
import os
import sys

from simclr_med import tf_env

tf_env.configure()  # before anything imports TensorFlow

from absl import app, flags  # noqa: E402

from simclr_med.config import Config  # noqa: E402

HELP = {
    "mode": "train | eval | train_then_eval | export | sweep (LR × weight-decay grid for fine-tuning)",
    "train_mode": "pretrain (SimCLR/MICLe) | finetune (end to end) | lineareval (frozen encoder)",
    "method": "simclr | micle (positive pairs from two different images of a case)",
    "dataset": "demo | derm_cases/generic | derm_cases/scin | derm_cases/ham10000 | chexpert_v1 | nih_chestxray14",
    "data_dir": "where TFDS datasets are built and read (default: <model_dir>/data)",
    "manual_dir": "the user's manual download for the TFDS builder",
    "train_split": "split to train on",
    "eval_split": "split to evaluate on",
    "eval_dataset": "evaluate on another dataset (zero-shot, e.g. nih_chestxray14 for a CheXpert model)",
    "image_size": "input resolution (paper: 224; Derm fine-tuning 448)",
    "augmentation": "simclr | chexpert_pretrain | chexpert_finetune | crop_only | none",
    "color_jitter_strength": "colour jitter strength s (SimCLR: 1.0; CheXpert: 0.5)",
    "label_fraction": "fraction of labelled cases used for fine-tuning, chosen by case/patient",
    "uncertainty_policy": "CheXpert uncertain labels: mixed | u_ones | u_zeros | u_ignore",
    "cache_dataset": "cache decoded examples in memory",
    "resnet_depth": "18 | 34 | 50 | 101 | 152 | 200",
    "width_multiplier": "ResNet width multiplier 1..4",
    "num_proj_layers": "layers in the projection head",
    "proj_out_dim": "output size of the projection head",
    "checkpoint": "initialise the encoder from a run dir, checkpoint prefix, Keras weights file or a "
                  "released google-research/simclr TF1 checkpoint (in --mode=eval: the checkpoint to evaluate)",
    "checkpoint_head": "pretraining from --checkpoint: start the projection head from its head too, when it has one "
                       "(as SimCLR's code does); --nocheckpoint_head starts a fresh head",
    "zero_init_residual": "zero-initialise the last BN gamma of each residual block",
    "temperature": "NT-Xent temperature",
    "hidden_norm": "L2-normalise projections (cosine similarity)",
    "optimizer": "lars | sgd | adam",
    "learning_rate": "base learning rate (before batch scaling)",
    "learning_rate_scaling": "linear (×B/256) | sqrt (×√B) | none",
    "warmup_epochs": "linear warmup length in epochs",
    "weight_decay": "L2 weight decay (biases and BatchNorm excluded)",
    "momentum": "optimizer momentum",
    "train_batch_size": "global batch size (cases for MICLe, images otherwise)",
    "train_steps": "training steps (overrides --train_epochs when > 0)",
    "train_epochs": "training epochs",
    "eval_batch_size": "batch size for evaluation",
    "model_dir": "run directory: checkpoints, TensorBoard logs, results, exports",
    "checkpoint_steps": "save a checkpoint every N steps",
    "keep_checkpoint_max": "checkpoints kept on disk",
    "log_steps": "TensorBoard scalars every N steps",
    "steps_per_execution": "training steps per tf.function call",
    "strategy": "default | mirrored | tpu",
    "tpu": "TPU name or address (--strategy=tpu)",
    "num_logical_devices": "split the CPU into N logical devices (testing MirroredStrategy)",
    "precision": "float32 | mixed_bfloat16 | mixed_float16",
    "use_xla": "compile train steps with XLA (faster on GPU/TPU, slower on CPU)",
    "winograd": "on CPU in float32, run wide stride-1 3x3 convolutions as Winograd convolutions (~9% faster ResNet-50 step, ~0.15 GiB more live tensors; see README Performance)",
    "host_memory_limit_gib": "cap TensorFlow's CPU tensor memory at this many GiB, bounding peak RSS (0: no cap; see README Performance)",
    "seed": "random seed",
    "skip_nonfinite_steps": "skip up to N steps with NaN/Inf loss before stopping",
    "verbose": "0 silent, 1 progress bar, 2 one line per chunk",
    "sweep_learning_rates": "--mode=sweep learning rates, comma-separated (default: 7 log-spaced 10^-3.5..10^-0.5)",
    "sweep_weight_decays": "--mode=sweep weight decays, comma-separated (default: 1e-5,1e-4,1e-3,0)",
}

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}
for _field in dataclasses.fields(Config):
    _kind = type(_field.default)
    _DEFINE[_kind](_field.name, _field.default, HELP[_field.name])

FLAGS = flags.FLAGS


def _fail(error: Exception) -> None:
    print(f"simclr-med: error: {error}", file=sys.stderr)
    sys.exit(2)


def _out_of_memory(error, cfg: Config) -> str:
    """One line instead of TensorFlow's op traceback: what failed to fit, and what to change."""
    what = next((line.strip() for line in error.message.splitlines() if line.startswith("OOM ")), "out of memory")
    if cfg.host_memory_limit_gib:
        advice = f"--host_memory_limit_gib={cfg.host_memory_limit_gib} is too small: raise it (0: no limit)"
    else:
        advice = "the device or host has too little memory"
    return f"{what}: {advice}, or lower --train_batch_size / --eval_batch_size / --image_size"


def _keep_tool_files_in(model_dir: str) -> None:
    """Keras writes ~/.keras/keras.json when imported, and matplotlib (which Keras imports) a font
    cache under ~/.cache: kept in the run directory, a run writes nothing outside model_dir and
    data_dir. Variables the user set win."""
    os.environ.setdefault("KERAS_HOME", os.path.join(model_dir, ".keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(model_dir, ".matplotlib"))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from simclr_med.errors import SimclrMedError

    cfg = Config(**{name: getattr(FLAGS, name) for name in Config.field_names()})
    try:
        cfg.validate()  # contradictory flags fail before TensorFlow loads
    except SimclrMedError as e:
        _fail(e)
    _keep_tool_files_in(cfg.model_dir)
    tf_env.limit_host_memory(cfg.host_memory_limit_gib)
    import tensorflow as tf

    from simclr_med import experiment
    from simclr_med.methods import sweep

    try:
        if cfg.mode == "sweep":
            outcome = sweep.sweep(cfg, **cfg.sweep_grid())
            summary = {"train": outcome} if "preempted" in outcome else {"result": outcome["test_result"]}
        else:
            summary = experiment.run(cfg)
    except SimclrMedError as e:
        _fail(e)
    except tf.errors.ResourceExhaustedError as e:
        _fail(_out_of_memory(e, cfg))
    if summary.get("train", {}).get("preempted"):
        sys.exit(143)  # stopped by SIGTERM after saving; rerun to resume
    if "result" in summary:
        shown = {k: round(v, 4) for k, v in summary["result"].items() if isinstance(v, float)}
        print(f"simclr-med: result: {shown}")
    if "export" in summary:
        print(f"simclr-med: exported SavedModel: {summary['export']}")


if __name__ == "__main__":
    app.run(main)
