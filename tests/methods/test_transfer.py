"""The transfer harness: cells are ordinary runs, resumable, tabulated with t-tests; early stopping."""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest
import tensorflow as tf

from simclr_med import config, experiment
from simclr_med.config import Config
from simclr_med.data import datasets
from simclr_med.errors import CheckpointError, ConfigError
from simclr_med.methods import transfer
from simclr_med.train import checkpoints

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(resnet_depth=18, image_size=32, augmentation="crop_only", train_batch_size=8, optimizer="sgd",
            learning_rate=0.05, learning_rate_scaling="none", warmup_epochs=0, eval_batch_size=64, verbose=0)
DEMO_TRAIN_CASES = 140


def test_stopping_point_follows_online_early_stopping():
    history = [(10, 0.5), (20, 0.7), (30, 0.6), (40, 0.65), (50, 0.9)]
    assert transfer.stopping_point(history, patience=2) == {
        "best_step": 20, "best_value": 0.7, "stop_step": 40, "stopped_early": True}
    assert transfer.stopping_point(history, patience=3) == {
        "best_step": 50, "best_value": 0.9, "stop_step": 50, "stopped_early": False}
    # An undefined score (e.g. AUC of a one-class validation set) is no improvement.
    assert transfer.stopping_point([(1, None), (2, 0.1), (3, None)], patience=2)["best_step"] == 2


def _spec(**changes):
    spec = {"base": {**TINY, "train_mode": "finetune"}, "inits": {"random": ""}, "baseline": "random",
            "tasks": {"demo": {"dataset": "demo", "train_steps": 9}}, "seeds": 2}
    spec.update(changes)
    return spec


@pytest.mark.parametrize("changes, message", [
    ({"inits": {"random": ""}, "runs": 3}, r"unknown key\(s\) \['runs'\]"),
    ({"tasks": {"demo": {"dataset": "demo", "learning_rte": 0.1}}},
     r"task 'demo': 'learning_rte' is not a Config"),
    ({"tasks": {"demo": {"train_steps": "many"}}}, r"train_steps='many' is not of type int"),
    ({"baseline": "imagenet"}, r"baseline 'imagenet' is not one of the inits"),
    ({"tasks": {"demo": {"seed": 3}}}, r"'seed' is set by the harness"),
    ({"seeds": [1, 1]}, r"distinct integers"),
    ({"early_stopping": {"patience": 2, "every": 3}}, r"early_stopping: .*every"),
])
def test_bad_specs_name_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        transfer.load_spec(_spec(**changes), source="my_spec.json")


def test_bad_cells_and_inits_fail_before_any_training(tmp_path, capsys):
    spec = _spec(tasks={"demo": {"dataset": "demo", "train_mode": "pretrain"}})
    with pytest.raises(ConfigError, match="train_mode must be finetune or lineareval"):
        transfer.run(spec, str(tmp_path))
    bad = tmp_path / "spec.json"
    bad.write_text(json.dumps(_spec(inits={"random": "", "ssl": str(tmp_path / "no_such_run")})))
    with pytest.raises(CheckpointError, match="spec.json: init 'ssl'.*no_such_run"):
        transfer.run(str(bad), str(tmp_path))
    assert transfer.main(["--spec", str(bad), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not os.path.exists(tmp_path / "demo")


def test_shipped_recipes_parse(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the working directory
    cfg = Config.from_flagfile("flags/chexpert_continual.cfg", model_dir="x").validate()
    assert (cfg.train_mode, cfg.dataset, cfg.resnet_depth, cfg.image_size) == (
        "finetune", "chexpert_v1", 50, 224)
    assert cfg.checkpoint  # continual: starts from ImageNet weights
    spec = transfer.load_spec("flags/demo_transfer.json")
    cells = [transfer.cell_config(spec, "root", t, i, s)
             for t in spec.tasks for i in spec.inits for s in spec.seeds]
    assert len(cells) == len(spec.tasks) * len(spec.inits) * len(spec.seeds) > 1
    assert {c.checkpoint for c in cells} == {"", *(i["checkpoint"] for i in spec.inits.values())}
    bad = tmp_path / "bad.cfg"
    bad.write_text("# ok\n--image_size=32\nimage_size=64\n")
    with pytest.raises(ConfigError, match=r"bad.cfg:3: expected --name=value"):
        config.read_flagfile(str(bad))


def test_harness_table_ttest_early_stopping_and_resume(tmp_path, monkeypatch):
    data_dir = str(tmp_path / "tfds")
    # Continual supervised pretraining on the demo (multi-class on a CPU): a fine-tuned run dir
    # that then initialises the cells of another fine-tuning task.
    source = str(tmp_path / "continual")
    experiment.run(Config(mode="train", train_mode="finetune", dataset="demo", data_dir=data_dir,
                          model_dir=source, train_steps=4, checkpoint_steps=4, **TINY))
    spec = _spec(inits={"random": "", "continual": source}, metric="auc", data_dir=data_dir,
                 early_stopping={"validation_split": "validation", "eval_every": 3, "patience": 2})
    loaded = []
    real_load = checkpoints.load_encoder
    monkeypatch.setattr(checkpoints, "load_encoder",
                        lambda enc, path: loaded.append(path) or real_load(enc, path))

    root = str(tmp_path / "bench")
    table = transfer.run(spec, root)

    cells = [transfer.cell_dir(root, "demo", i, s) for i in ("random", "continual") for s in (0, 1)]
    assert sorted(table["ran"]) == sorted(cells)
    ds, _ = datasets.load("demo", "train", data_dir=data_dir)
    train_images = sum(int(tf.size(case["images"])) for case in ds)
    assert train_images > DEMO_TRAIN_CASES  # cases of 1-4 images
    assert loaded == [source, source]  # the two continual cells, and nothing else, start from it
    with open(os.path.join(root, transfer.TABLE_FILE)) as f:
        assert json.load(f)["rows"] == table["rows"]
    rows = {r["init"]: r for r in table["rows"]}
    assert rows["random"]["n"] == rows["continual"]["n"] == 2 and rows["random"]["metric"] == "auc"
    assert "ttest" not in rows["random"]
    p = rows["continual"]["ttest"]["p_value"]
    assert isinstance(p, float) and 0.0 <= p <= 1.0
    text = transfer.format_table(table)
    assert "Δ vs random" in text and "continual" in text and "not adjusted" in text

    for cell in cells:
        with open(os.path.join(cell, transfer.STATE_FILE)) as f:
            state = json.load(f)
        with open(os.path.join(cell, "result.json")) as f:
            result = json.load(f)
        history = [(h["step"], h["value"]) for h in state["history"]]
        assert [s for s, _ in history] == [3, 6, 9][:len(history)]
        assert state["best_step"] == transfer.stopping_point(history, 2)["best_step"]
        assert state["best_value"] == max(v for _, v in history)
        # steps go by image
        assert state["epochs_to_best"] == pytest.approx(state["best_step"] * 8 / train_images)
        assert result["global_step"] == state["best_step"]  # the test score is the best checkpoint's
        kept = {int(p.rsplit("-", 1)[1])
                for p in tf.train.get_checkpoint_state(cell).all_model_checkpoint_paths}
        assert kept == {state["best_step"], state["stop_step"]}
        assert tf.train.latest_checkpoint(cell).endswith(f"ckpt-{state['stop_step']}")

    # A rerun skips finished cells; a cell that lost its result only re-evaluates (trained already).
    mtimes = {c: os.path.getmtime(os.path.join(c, "result.json")) for c in cells}
    os.remove(os.path.join(cells[0], "result.json"))
    modes = []
    real_run = experiment.run
    monkeypatch.setattr(experiment, "run", lambda cfg: modes.append(cfg.mode) or real_run(cfg))
    again = transfer.run(spec, root)
    assert again["ran"] == [cells[0]] and modes == ["eval"]
    assert all(os.path.getmtime(os.path.join(c, "result.json")) == mtimes[c] for c in cells[1:])
    assert again["rows"] == table["rows"]

    # A changed spec does not reuse cells run under the old one: the table would mix the two.
    spec["tasks"]["demo"]["train_steps"] = 12
    with pytest.raises(ConfigError, match=r"seed0 was run with other settings \(train_steps: 9 -> 12\)"):
        transfer.run(spec, root)


def test_early_stopping_stops_training_and_resumes_with_its_history(tmp_path, monkeypatch):
    """Validation scores that only fall: with patience 2 the cell must stop at its third
    evaluation (step 6 of 20) and never train further, even when run again without its result."""
    scored_steps = []
    restore_and_score = transfer._Validator.score_checkpoint

    def from_checkpoint(self, prefix):  # the real restore; the step comes from the checkpoint's name
        self.checkpoint_step = int(prefix.rsplit("-", 1)[1])
        return restore_and_score(self, prefix)

    def falling_score(self, model):
        step = self.__dict__.pop("checkpoint_step", None) or int(model.optimizer.iterations.numpy())
        scored_steps.append(step)
        return "auc", 1.0 / step

    monkeypatch.setattr(transfer._Validator, "score_checkpoint", from_checkpoint)
    monkeypatch.setattr(transfer._Validator, "score", falling_score)
    spec = _spec(tasks={"demo": {"dataset": "demo", "train_steps": 20}}, seeds=1,
                 data_dir=str(tmp_path / "tfds"),
                 early_stopping={"validation_split": "validation", "eval_every": 2, "patience": 2})
    root = str(tmp_path / "bench")
    assert transfer.cell_config(transfer.load_spec(spec), root, "demo", "random", 0).keep_checkpoint_max == 3
    transfer.run(spec, root)
    cell = transfer.cell_dir(root, "demo", "random", 0)
    with open(os.path.join(cell, transfer.STATE_FILE)) as f:
        state = json.load(f)
    assert scored_steps == [2, 4, 6]
    assert (state["best_step"], state["stop_step"], state["stopped_early"]) == (2, 6, True)
    assert tf.train.latest_checkpoint(cell).endswith("ckpt-6")  # no step beyond the stop was trained
    with open(os.path.join(cell, "result.json")) as f:
        assert json.load(f)["global_step"] == 2

    # Killed after saving step 6 but before scoring it: the rerun scores that checkpoint from disk,
    # stops there, and trains nothing.
    os.remove(os.path.join(cell, "result.json"))
    state.update(trained=False, history=state["history"][:-1])
    with open(os.path.join(cell, transfer.STATE_FILE), "w") as f:
        json.dump(state, f)
    transfer.run(spec, root)
    assert scored_steps == [2, 4, 6, 6] and tf.train.latest_checkpoint(cell).endswith("ckpt-6")
    with open(os.path.join(cell, transfer.STATE_FILE)) as f:
        assert json.load(f)["stop_step"] == 6
