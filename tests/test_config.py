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


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.num_layers=0"], "model.num_layers must be >= 1"),
        (["model.hidden_size=-5"], "model.hidden_size must be >= 1"),
        (["model.dropout=1.5"], "model.dropout must be in [0, 1)"),
        (["model.dropout=1.0"], "model.dropout"),
        (["model.subsampling_factor=0"], "model.subsampling_factor"),
        (["model.subsampling=conv", "model.subsampling_factor=1"], "model.subsampling_factor=1"),
        (["model.subsampling=conv", "model.subsampling_factor=8", "model.conv_layers=2"], "model.conv_layers=2"),
        (["optim.lr=-1e-3"], "optim.lr must be > 0"),
        (["optim.lr=.nan"], "optim.lr"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas"),
        (["optim.final_lr_ratio=1.5"], "optim.final_lr_ratio"),
        (["optim.grad_clip=0"], "optim.grad_clip"),
        (["train.epochs=0"], "train.epochs must be >= 1"),
        (["train.max_minutes=-1"], "train.max_minutes"),
        (["train.max_minutes=.inf"], "train.max_minutes"),
        (["train.log_every_steps=0"], "train.log_every_steps"),
        (["train.valid_every_epochs=0"], "train.valid_every_epochs"),
        (["train.seed=-1"], "train.seed"),
        (["data.max_frames_per_batch=0"], "data.max_frames_per_batch"),
        (["data.max_duration=0"], "data.max_duration"),
        (["features.sample_rate=0"], "features.sample_rate"),
        (["features.win_length=512"], "features.win_length must be in [1, 400]"),
        (["features.f_max=9000"], "features.f_max"),
        (["features.sample_rate=8000", "features.f_max=6000"], "features.f_max must be in (0, 4000]"),
        (["specaugment.time_width_ratio=2"], "specaugment.time_width_ratio"),
        (["specaugment.warp_factor=1"], "specaugment.warp_factor"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as raised:
        load_config(None, overrides)
    assert key in str(raised.value)


def numeric_fields():
    """(section, field) for every int and float field of every config section."""
    import dataclasses
    import typing

    for section, section_type in typing.get_type_hints(ExperimentConfig).items():
        hints = typing.get_type_hints(section_type)
        for field in dataclasses.fields(section_type):
            if hints[field.name] in (int, float, float | None):
                yield section, field.name, hints[field.name] is not int


@pytest.mark.parametrize("section, name, is_float", list(numeric_fields()))
def test_every_numeric_field_has_a_range(section, name, is_float):
    # Each one refuses an absurd value (and a float NaN) with a message naming it.
    extra = ["model.phone_ctc_weight=0.5"] if name == "phone_ctc_layer" else []
    for value in [-(10**9)] + ([".nan"] if is_float else []):
        with pytest.raises(ConfigError, match=rf"{section}\.{name}"):
            load_config(None, [*extra, f"{section}.{name}={value}"])


def test_defaults_and_boundary_values_are_accepted():
    config = load_config(None, ["model.dropout=0", "train.max_minutes=0", "optim.warmup_steps=0",
                                "features.f_max=8000", "model.subsampling_factor=1"])
    assert config.model.dropout == 0.0 and config.features.f_max == 8000.0
    # Unset, f_max is the Nyquist frequency of whatever the rate is.
    assert load_config(None, ["features.sample_rate=8000"]).features.f_max is None
