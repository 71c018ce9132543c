"""simclr-med entry point (google-research/simclr flag layout).

  python run.py --mode=train_then_eval --flagfile=flags/demo_pretrain.cfg --model_dir=/tmp/run

Flags mirror `simclr_med.config.Config` one to one; this is the only module that reads them.
"""
import logging
import os
import sys

from simclr_med import tf_env

tf_env.configure()  # before anything imports TensorFlow

from absl import app, flags  # noqa: E402

from simclr_med.config import Config  # noqa: E402

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool}


def define_flags(flag_values: flags.FlagValues) -> None:
    """One flag per Config field, with the schema's default and help. Choices are plain typed flags,
    checked by Config.validate, so a bad value is the project's one-line error (exit 2)."""
    for name, kind in Config.field_types().items():
        _DEFINE[kind](name, getattr(Config, name), Config.help_text(name), flag_values=flag_values)


def config_from(flag_values: flags.FlagValues) -> Config:
    return Config(**{name: getattr(flag_values, name) for name in Config.field_names()})


FLAGS = flags.FLAGS


def _fail(error: Exception) -> None:
    print(f"simclr-med: error: {error}", file=sys.stderr)
    sys.exit(2)


def _out_of_memory(error, cfg: Config) -> str:
    """One line instead of TensorFlow's op traceback: what failed to fit, and what to change."""
    what = next((line.strip() for line in error.message.splitlines() if line.startswith("OOM ")),
                "out of memory")
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
    from simclr_med.errors import SimclrMedError, storage_error

    cfg = config_from(FLAGS)
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
    except (OSError, tf.errors.OpError) as e:  # a read-only, full or forbidden folder: path and reason
        if (storage := storage_error(e, cfg.model_dir)) is not None:
            _fail(storage)
        if not isinstance(e, tf.errors.ResourceExhaustedError):
            raise
        _fail(_out_of_memory(e, cfg))
    if summary.get("train", {}).get("preempted"):
        sys.exit(143)  # stopped by SIGTERM after saving; rerun to resume
    if "result" in summary:
        shown = {k: round(v, 4) for k, v in summary["result"].items() if isinstance(v, float)}
        print(f"simclr-med: result: {shown}")
    if "export" in summary:
        print(f"simclr-med: exported SavedModel: {summary['export']}")


if __name__ == "__main__":
    define_flags(FLAGS)
    app.run(main)
