import pytest

from asr.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict


def test_yaml_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 128\noptim:\n  betas: [0.9, 0.99]\n")
    config = load_config(path, ["model.cell=gru", "train.epochs=3", "optim.lr=1e-3", "features.f_max=null"])
    assert config.model.hidden_size == 128 and config.model.cell == "gru"
    assert config.train.epochs == 3 and config.optim.lr == 1e-3 and config.optim.betas == (0.9, 0.99)
    assert from_dict(ExperimentConfig, to_dict(config)) == config


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.hidden=3", "unknown key"),
        ("model.cell=transformer", "not one of"),
        ("train.epochs=many", "expected int"),
        ("nonsense", "section.key=value"),
    ],
)
def test_bad_overrides_are_explained(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])
