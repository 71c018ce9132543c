"""The projection head: what --num_proj_layers counts, and the head the paper's recipes build."""
import os

import keras
import pytest

from simclr_med.config import Config
from simclr_med.models import heads

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def dense_layers(head):
    return [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_num_layers_counts_the_fully_connected_layers_as_simclr(num_layers):
    """As SimCLR's --num_proj_layers: every layer but the last keeps the input width and has a ReLU."""
    head = heads.build_projection_head(16, num_layers=num_layers, out_dim=8)
    dense = dense_layers(head)
    assert [layer.units for layer in dense] == [16] * (num_layers - 1) + [8]
    assert sum(isinstance(layer, keras.layers.ReLU) for layer in head.layers) == num_layers - 1
    assert head.output_shape == (None, 8)


@pytest.mark.parametrize("recipe", ["derm_simclr.cfg", "derm_micle.cfg", "chexpert_simclr.cfg"])
def test_the_papers_pretraining_recipes_use_two_fully_connected_layers(recipe, monkeypatch):
    """The paper: "following SimCLR, two fully connected layers" (SimCLR v2's 3 stays available)."""
    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the working directory
    cfg = Config.from_flagfile(os.path.join("flags", recipe))
    assert cfg.train_mode == "pretrain" and cfg.num_proj_layers == 2
    head = heads.build_projection_head(2048, num_layers=cfg.num_proj_layers, out_dim=cfg.proj_out_dim)
    assert [layer.units for layer in dense_layers(head)] == [2048, 128]
