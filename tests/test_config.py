"""The config schema: one declaration per flag (default, help, choices) that run.py, validate and
the flagfile reader all follow, so a recipe means the same to run.py and to the transfer harness."""
import dataclasses
import glob
import importlib
import os
import subprocess
import sys

import pytest
from absl import flags

from simclr_med import config
from simclr_med.config import Config
from simclr_med.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHOICE_FIELDS = [f.name for f in dataclasses.fields(Config) if f.metadata["choices"]]
# Settings another check needs for a valid choice to validate (consistency, not choices).
COMPATIBLE = {("mode", "sweep"): {"train_mode": "finetune"}, ("train_mode", "finetune"): {"method": "simclr"}}


def run_py():
    return importlib.import_module("run")  # the repo root is on sys.path (conftest)


def absl_config(argv) -> Config:
    """The Config run.py builds from these arguments (absl's parser, fresh flag registry)."""
    fv = flags.FlagValues()
    run_py().define_flags(fv)
    fv(["run.py", *argv])
    return run_py().config_from(fv)


def test_every_field_has_help_and_typed_default():
    for f in dataclasses.fields(Config):
        assert f.metadata["help"].strip(), f.name
        assert type(f.default) in (bool, int, float, str), f.name
        choices = f.metadata["choices"]
        if choices:
            assert f.default in choices, f.name
            assert all(type(c) is type(f.default) for c in choices), f.name
            assert all(str(c) in Config.help_text(f.name) for c in choices), f.name
    assert Config.choices("optimizer") == ("lars", "sgd", "adam") and Config.choices("dataset") is None
    assert {"mode", "train_mode", "method", "augmentation", "resnet_depth", "optimizer",
            "learning_rate_scaling", "precision", "strategy", "uncertainty_policy"} <= set(CHOICE_FIELDS)


def test_schema_choices_match_the_code_that_uses_them():
    from simclr_med.data import augment
    from simclr_med.models import resnet
    from tfds_builders.cxr_labels import POLICIES

    assert Config.choices("augmentation") == tuple(augment.PRESETS)
    assert Config.choices("uncertainty_policy") == tuple(POLICIES)
    assert Config.choices("resnet_depth") == tuple(sorted(resnet._SPECS))


@pytest.mark.parametrize("name", CHOICE_FIELDS)
def test_choices_are_enforced_with_one_line_naming_the_flag(name, tmp_path):
    base = dict(model_dir=str(tmp_path / "run"))
    for value in Config.choices(name):
        Config(**{**base, **COMPATIBLE.get((name, value), {}), name: value}).validate()
    bad = 7 if Config.field_types()[name] is int else "bogus"
    with pytest.raises(ConfigError) as err:
        Config(**base, **{name: bad}).validate()
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"--{name}") and repr(bad) in message, message
    assert all(str(c) in message for c in Config.choices(name)), message


def test_choice_messages():
    with pytest.raises(ConfigError, match=r"^--optimizer='adamw' is not one of lars, sgd, adam$"):
        Config(model_dir="x", optimizer="adamw").validate()
    with pytest.raises(ConfigError, match=r"^--resnet_depth=7 is not one of 18, 34, 50, 101, 152, 200$"):
        Config(model_dir="x", resnet_depth=7).validate()
    with pytest.raises(ConfigError, match=r"^--augmentation: unknown augmentation 'fancy'; expected one of "
                                          r"simclr, "):
        Config(model_dir="x", augmentation="fancy").validate()


def test_flag_lines_parse_like_absl(tmp_path):
    lines = ["# a comment", "", "   ", "// another comment", "--resnet_depth=18", "  --image_size=32  ",
             "--nocheckpoint_head", "--cache_dataset", "--hidden_norm=false", "--use_xla=1",
             "--winograd=False", "--learning_rate=1e-3", "--checkpoint=runs/a=b", "--tpu=", "--image_size=48"]
    values = config.parse_flags(lines, "inline")
    assert values == {"resnet_depth": 18, "image_size": 48, "checkpoint_head": False, "cache_dataset": True,
                      "hidden_norm": False, "use_xla": True, "winograd": False, "learning_rate": 1e-3,
                      "checkpoint": "runs/a=b", "tpu": ""}
    assert type(values["learning_rate"]) is float
    path = tmp_path / "inline.cfg"
    path.write_text("\n".join(lines) + "\n")
    assert Config.from_flagfile(str(path)) == absl_config([f"--flagfile={path}"]) == Config(**values)
    assert Config.from_flagfile(str(path), image_size=64).image_size == 64


def test_nested_flagfiles_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base.cfg").write_text("--train_mode=finetune\n--train_steps=10\n")
    (tmp_path / "top.cfg").write_text("--flagfile=base.cfg\n--train_steps=20\n")
    assert config.read_flagfile("top.cfg") == {"train_mode": "finetune", "train_steps": 20}
    assert Config.from_flagfile("top.cfg") == absl_config(["--flagfile=top.cfg"])
    (tmp_path / "loop.cfg").write_text("--flagfile=loop.cfg\n")
    with pytest.raises(ConfigError, match="flagfile loop.cfg: includes itself"):
        config.read_flagfile("loop.cfg")
    with pytest.raises(ConfigError, match=r"flagfile missing.cfg: cannot read it"):
        config.read_flagfile("missing.cfg")


@pytest.mark.parametrize("line, message", [
    ("--learning_rte=0.1", r"bad.cfg:3: unknown flag --learning_rte \(not a Config field"),
    ("--nolearning_rate", r"bad.cfg:3: unknown flag --nolearning_rate"),
    ("--hidden_norm=maybe", r"bad.cfg:3: hidden_norm='maybe' is not a boolean"),
    ("--train_steps=1.5", r"bad.cfg:3: train_steps='1.5' is not of type int"),
    ("--train_steps", r"bad.cfg:3: --train_steps needs a value"),
    ("--nohidden_norm=true", r"bad.cfg:3: --nohidden_norm takes no value"),
    ("image_size=64", r"bad.cfg:3: expected --name=value, got 'image_size=64'"),
])
def test_bad_flag_lines_name_file_line_and_flag(tmp_path, line, message):
    bad = tmp_path / "bad.cfg"
    bad.write_text(f"# ok\n--image_size=32\n{line}\n")
    with pytest.raises(ConfigError, match=message) as err:
        config.read_flagfile(str(bad))
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


FLAGFILES = sorted(glob.glob(os.path.join(REPO, "flags", "*.cfg")))


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_shipped_flagfiles_mean_the_same_to_run_py_and_the_schema(path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the working directory
    path = os.path.relpath(path, REPO)
    cfg = Config.from_flagfile(path, model_dir=str(tmp_path / "run"))
    assert cfg == dataclasses.replace(absl_config([f"--flagfile={path}"]), model_dir=cfg.model_dir)
    assert config.read_flagfile(path)  # sets something
    cfg.validate()


def test_helpfull_lists_the_schema_help():
    done = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), "--helpfull"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]  # absl's usage exit
    shown = " ".join(done.stdout.split())
    for name in Config.field_names():
        assert f"--{name}:" in shown or f"--[no]{name}:" in shown, name
        assert " ".join(Config.help_text(name).split()) in shown, name


def test_run_py_rejects_a_bad_choice_before_tensorflow_loads(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(REPO, "run.py"), f"--model_dir={tmp_path / 'run'}",
                           "--optimizer=adamw"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == \
        "simclr-med: error: --optimizer='adamw' is not one of lars, sgd, adam"
    assert not (tmp_path / "run").exists()


def test_the_fields_a_resumed_run_may_change_are_declared_once_in_the_schema():
    """Paths, logging, hardware and evaluation: a resume and the harness reruns share this one list, and a
    new field counts as training until declared otherwise."""
    assert Config.bookkeeping_fields() == {
        "mode", "model_dir", "data_dir", "manual_dir", "cache_dataset", "checkpoint_steps",
        "keep_checkpoint_max", "log_steps", "verbose", "strategy", "tpu", "num_logical_devices", "use_xla",
        "steps_per_execution", "winograd", "host_memory_limit_gib", "eval_split", "eval_dataset",
        "eval_batch_size", "sweep_learning_rates", "sweep_weight_decays"}
    cfg = Config(train_batch_size=8, log_steps=3)
    assert cfg.training_settings()["train_batch_size"] == 8 and "log_steps" not in cfg.training_settings()
    assert set(cfg.training_settings()) == set(Config.field_names()) - Config.bookkeeping_fields()
