"""Every shipped recipe config loads and builds its model."""

from pathlib import Path

import pytest
import torch

from asr.config import load_config
from asr.model.network import AcousticModel

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*/conf/*.yaml"))


def test_configs_exist():
    names = {p.stem for p in CONFIGS}
    assert {"mini", "libri-light-10h", "100h", "460h", "960h", "cpu-small", "demo"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.parent.name}/{p.stem}")
def test_config_loads_and_builds(path):
    config = load_config(path)
    with torch.device("meta"):  # no memory for the 5 x 1024 model's weights
        model = AcousticModel(config.model, config.features.n_mels, 29)
    parameters = sum(p.numel() for p in model.parameters())
    assert parameters > 1e5
    assert config.data.train_manifest and config.train.out_dir
