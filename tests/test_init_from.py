"""Fine-tuning (train.init_from, asr/training/init.py) on the tone language and hand-made tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config, write_tone_manifests

from asr.cli import main
from asr.config import ConfigError, ExperimentConfig, from_dict, load_config, to_dict
from asr.data.phones import SHARED_PHONE_SYMBOLS, phone_inventory
from asr.data.text import CharVocabulary
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.storage.checkpoint import Checkpoint, architecture_differences, load_checkpoint
from asr.storage.model_folder import read_model
from asr.training.init import InitFromError, start_from
from asr.training.loop import build_run, train

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def other_corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Another tone corpus (other letters, other pitches): "a new language" for the tone model."""
    texts = ["fad", "cafe", "fed a", "deaf", "bead", "face", "dab fe", "ace"]
    return write_tone_manifests(tmp_path_factory.mktemp("other"), texts, texts[:3])


def config_with(out_dir: Path, corpus: dict[str, Path], init_from: Path | str, **sections: dict) -> ExperimentConfig:
    train_section = {"init_from": str(init_from), **sections.pop("train", {})}
    return tiny_config(out_dir, corpus, train=train_section, **sections)


def test_a_new_run_takes_the_layers_and_the_rows_of_shared_characters(trained_checkpoint, other_corpus, tmp_path):
    source = read_model(trained_checkpoint)
    run = build_run(config_with(tmp_path / "es", other_corpus, trained_checkpoint, data={"language": "es"}))
    # Spanish: the vocabulary comes from the data, " abcdef" (English's 28 have these too, at other ids).
    assert run.vocabulary.tokens == ["<blank>", " ", "a", "b", "c", "d", "e", "f"]
    state = run.model.state_dict()
    for name, value in source.model_state.items():
        if not name.startswith("output."):
            assert torch.equal(state[name], value), name
    for row, token in enumerate(run.vocabulary.tokens):
        assert torch.equal(state["output.weight"][row], source.model_state["output.weight"][
            source.vocabulary.tokens.index(token)]), token
    # The statistics of the new data (another pitch range), not the model's ...
    assert not torch.allclose(run.frontend.normalizer.mean, source.normalizer_mean)
    # ... unless asked to keep them.
    kept = build_run(config_with(tmp_path / "keep", other_corpus, trained_checkpoint,
                                 train={"init_normalization": "keep"}))
    assert torch.equal(kept.frontend.normalizer.mean, source.normalizer_mean)
    assert torch.equal(kept.frontend.normalizer.std, source.normalizer_std)


def test_a_model_folder_of_an_old_version_is_a_starting_point_too(other_corpus, tmp_path):
    folder = FIXTURES / "tiny-folder-v1"
    source = read_model(folder)
    run = build_run(config_with(tmp_path / "run", other_corpus, folder, model={"num_layers": 1, "hidden_size": 8},
                                features={"n_mels": 8}))
    assert torch.equal(run.model.layers[0].forward_rnn.weight_ih_l0, source.model_state["layers.0.forward_rnn.weight_ih_l0"])


def hand_made_source(config: ExperimentConfig, vocabulary: CharVocabulary) -> Checkpoint:
    torch.manual_seed(0)
    model = AcousticModel(config.model, config.features.n_mels, len(vocabulary),
                          len(phone_inventory(config.data.language)))
    n_mels = config.features.n_mels
    return Checkpoint("source.pt", config, vocabulary, torch.full((n_mels,), 3.0), torch.full((n_mels,), 2.0),
                      model.state_dict(), {}, None, None)


def small_config(**model: object) -> ExperimentConfig:
    data = to_dict(ExperimentConfig())
    data["model"].update(num_layers=2, hidden_size=8, phone_ctc_weight=0.5, **model)
    data["features"].update(n_mels=8)
    return from_dict(ExperimentConfig, data)


def test_rows_of_new_characters_and_phones_start_fresh():
    english = small_config()
    source = hand_made_source(english, CharVocabulary.english())
    data = to_dict(english)
    data["data"]["language"] = "es"
    spanish = from_dict(ExperimentConfig, data)
    vocabulary = CharVocabulary([" ", "a", "ñ", "z"])
    torch.manual_seed(1)
    model = AcousticModel(spanish.model, 8, len(vocabulary), len(phone_inventory("es")))
    fresh = {name: value.clone() for name, value in model.state_dict().items()}
    frontend = FeatureFrontend(spanish.features)
    said: list[str] = []
    start_from(model, frontend, source, vocabulary, spanish, said.append)
    weight, old = model.output.weight, source.model_state["output.weight"]
    english_ids = {token: row for row, token in enumerate(source.vocabulary.tokens)}
    for row, token in enumerate(vocabulary.tokens):
        expected = fresh["output.weight"][row] if token == "ñ" else old[english_ids[token]]
        assert torch.equal(weight[row], expected), token
    assert torch.equal(model.output.bias[3], fresh["output.bias"][3])  # ñ
    # Phones by symbol: English's ids 1..47 are the shared inventory's first ones; "ʏ" is new.
    phones, old_phones = model.phone_output.weight, source.model_state["phone_output.weight"]
    assert torch.equal(phones[: len(phone_inventory("en"))], old_phones)
    new_phone = SHARED_PHONE_SYMBOLS.index("ʏ") + 1
    assert torch.equal(phones[new_phone], fresh["phone_output.weight"][new_phone])
    assert torch.equal(frontend.normalizer.mean, torch.zeros(8))  # recomputed later, by the training run
    assert "output rows of 4 of 5 labels taken, 1 new ('ñ')" in said[0] and "48 of" in said[0]


def test_a_phone_head_on_another_layer_starts_fresh():
    source = hand_made_source(small_config(phone_ctc_layer=1), CharVocabulary.english())
    config = small_config(phone_ctc_layer=2)
    torch.manual_seed(1)
    model = AcousticModel(config.model, 8, 29)
    fresh = model.phone_output.weight.clone()
    said: list[str] = []
    start_from(model, FeatureFrontend(config.features), source, CharVocabulary.english(), config, said.append)
    assert torch.equal(model.phone_output.weight, fresh) and "phone head new" in said[0]


def test_another_architecture_is_refused_naming_each_field(trained_checkpoint, other_corpus, tmp_path):
    config = config_with(tmp_path / "run", other_corpus, trained_checkpoint, model={"hidden_size": 64},
                         features={"n_mels": 40})
    with pytest.raises(InitFromError, match=r"features.n_mels: 80 -> 40; model.hidden_size: 48 -> 64"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_freezing_needs_a_model_steps_and_layers_it_has(trained_checkpoint):
    base = to_dict(ExperimentConfig())
    for train_section, message in (({"freeze_layers": 1, "freeze_steps": 5}, "needs train.init_from"),
                                   ({"freeze_layers": 1, "init_from": "m.pt"}, "go together"),
                                   ({"freeze_layers": 5, "freeze_steps": 5, "init_from": "m.pt"}, "at most model")):
        with pytest.raises(ConfigError, match=message):
            from_dict(ExperimentConfig, {**base, "train": {**base["train"], **train_section}})


def test_frozen_layers_wait_and_an_interrupted_run_resumes_from_last_pt(trained_checkpoint, other_corpus, tmp_path):
    model = tmp_path / "start.pt"
    shutil.copy(trained_checkpoint, model)
    start = read_model(model).model_state
    sections = {"model": {"dropout": 0.2}, "data": {"max_frames_per_batch": 300},
                "train": {"epochs": 3, "freeze_layers": 1, "freeze_steps": 4}}
    straight = train(config_with(tmp_path / "straight", other_corpus, model, **sections))
    assert straight.step > 6
    # Interrupted while layer 1 is frozen: it is as it was, the layers above it are not.
    interrupted = {**sections, "train": {**sections["train"], "max_steps": 3}}
    first = train(config_with(tmp_path / "resumed", other_corpus, model, **interrupted))
    assert first.step == 3
    after = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    assert all(torch.equal(after[name], value) for name, value in start.items() if name.startswith("layers.0."))
    assert not torch.equal(after["layers.1.forward_rnn.weight_ih_l0"], start["layers.1.forward_rnn.weight_ih_l0"])
    # The same command again resumes from last.pt: the starting model is not read again (it is gone).
    model.unlink()
    resumed = train(config_with(tmp_path / "resumed", other_corpus, model, **sections))
    assert resumed.step == straight.step
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(b["layers.0.forward_rnn.weight_ih_l0"], start["layers.0.forward_rnn.weight_ih_l0"])


def test_asr_train_takes_init_from_as_an_override(trained_checkpoint, other_corpus, tmp_path, capsys):
    config = tiny_config(tmp_path / "run", other_corpus, train={"max_steps": 2})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["train", str(path), f"train.init_from={trained_checkpoint}", "data.language=es"]) == 0
    assert f"init from {trained_checkpoint}: front end and 2 recurrent layers taken" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["train"]["init_from"] == str(trained_checkpoint)


@pytest.mark.parametrize("config, model_config", [("commonvoice/conf/small.yaml", "espeak/conf/demo.yaml"),
                                                  ("commonvoice/conf/cpu-small.yaml", "librispeech/conf/cpu-small.yaml")])
def test_the_common_voice_configs_have_the_network_of_the_model_they_start_from(config, model_config):
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    assert architecture_differences(to_dict(load_config(recipes / model_config)), load_config(recipes / config)) == []
