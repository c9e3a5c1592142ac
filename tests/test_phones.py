"""The auxiliary phone CTC loss: espeak-ng phone labels, the phone head, training with it."""

import json
import shutil

import pytest
import torch

from asr.data import phones
from asr.config import ConfigError, ModelConfig
from asr.model.network import AcousticModel
from asr.data.phones import NUM_PHONE_LABELS, PHONE_SYMBOLS, PhonemizerError, phone_ids, phonemize

from conftest import tiny_config


def symbols(ids):
    return [PHONE_SYMBOLS[i - 1] for i in ids]


def test_phone_ids_drop_stress_and_word_boundaries_and_keep_length_marks():
    assert symbols(phone_ids("həlˈoʊ wˈɜːld")) == ["h", "ə", "l", "o", "ʊ", "w", "ɜː", "l", "d"]
    assert symbols(phone_ids("bˌʌt")) == ["b", "ʌ", "t"]
    # Symbols outside the inventory (here a palatal fricative) are left out, not guessed.
    assert symbols(phone_ids("ɪç")) == ["ɪ"]
    assert all(0 < i < NUM_PHONE_LABELS for i in phone_ids("ðə kwˈɪk bɹˈaʊn fˈɑːks"))


def fake_espeak(calls):
    """Stands in for espeak-ng: 'a' -> 'æ', 'b' -> 'b', 'c' -> 'k', 'd' -> 'd', 'e' -> 'iː'."""
    table = str.maketrans({"a": "æ", "c": "k", "e": "iː"})

    def run(lines, voice):
        calls.append(list(lines))
        return [line.translate(table) for line in lines]

    return run


def test_phonemize_caches_espeak_output_for_the_next_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(phones, "_espeak", fake_espeak(calls))
    cache = tmp_path / "phones.json"
    first = phonemize(["bad cab", "ace", "bad cab"], cache)
    assert symbols(first["bad cab"]) == ["b", "æ", "d", "k", "æ", "b"]
    assert symbols(first["ace"]) == ["æ", "k", "iː"]
    assert calls == [["ace", "bad cab"]]  # each distinct transcript once
    assert json.loads(cache.read_text()) == {"ace": "ækiː", "bad cab": "bæd kæb"}

    def no_espeak(lines, voice):
        raise AssertionError("espeak-ng called although the cache has every transcript")

    monkeypatch.setattr(phones, "_espeak", no_espeak)
    assert phonemize(["ace", "bad cab"], cache) == first


def test_lines_that_espeak_merged_are_phonemised_one_by_one(monkeypatch):
    def merging(lines, voice):
        return [" ".join(lines)]  # two lines in, one out

    monkeypatch.setattr(phones, "_espeak", merging)
    assert phones.espeak_ipa(["bad", "cab"]) == ["bad", "cab"]


def test_a_missing_espeak_is_reported_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(PhonemizerError, match="apt-get install espeak-ng"):
        phonemize(["hello"])


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")
def test_espeak_phonemises_english():
    result = phonemize(["hello world", "nothing"])
    assert symbols(result["hello world"]) == ["h", "ə", "l", "o", "ʊ", "w", "ɜː", "l", "d"]
    assert symbols(result["nothing"]) == ["n", "ʌ", "θ", "ɪ", "ŋ"]


def test_the_phone_head_reads_its_layer_and_only_layers_below_learn_from_it():
    torch.manual_seed(0)
    model = AcousticModel(ModelConfig(num_layers=3, hidden_size=8, dropout=0.0, phone_ctc_weight=0.5,
                                      phone_ctc_layer=2), input_dim=4, vocab_size=5)
    features, lengths = torch.randn(2, 12, 4), torch.tensor([12, 7])  # (B, T, C)
    log_probs, out_lengths, phone_log_probs = model(features, lengths, with_phones=True)
    assert log_probs.shape == (2, 4, 5) and phone_log_probs.shape == (2, 4, NUM_PHONE_LABELS)
    assert out_lengths.tolist() == [4, 3]
    assert torch.equal(model(features, lengths)[0], log_probs)  # the phone head changes nothing else
    phone_log_probs.sum().backward()
    assert model.layers[1].forward_rnn.weight_ih_l0.grad.abs().sum() > 0
    assert model.layers[2].forward_rnn.weight_ih_l0.grad is None  # above the phone layer
    assert model.output.weight.grad is None


def test_phone_settings_are_checked():
    with pytest.raises(ConfigError, match="phone_ctc_layer must be in 1..4"):
        ModelConfig(num_layers=4, phone_ctc_weight=0.3, phone_ctc_layer=5)
    with pytest.raises(ConfigError, match="phone_ctc_weight must be >= 0"):
        ModelConfig(phone_ctc_weight=-1.0)
    assert AcousticModel(ModelConfig(hidden_size=8), 4, 5).phone_output is None  # off: no head, no weights
    with pytest.raises(ValueError, match="phone_ctc_weight > 0"):
        AcousticModel(ModelConfig(hidden_size=8), 4, 5)(torch.randn(1, 6, 4), torch.tensor([6]), with_phones=True)


def test_training_with_the_phone_loss_trains_the_phone_head(tone_corpus, tmp_path, monkeypatch):
    from asr.storage.checkpoint import load_checkpoint
    from asr.training.loop import train
    from asr.inference.recognizer import load_model

    import asr.training.steps

    calls, losses = [], []
    monkeypatch.setattr(phones, "_espeak", fake_espeak(calls))
    ctc_loss = asr.training.steps.ctc_loss

    def recording_ctc_loss(log_probs, *args):
        loss = ctc_loss(log_probs, *args)
        if torch.is_grad_enabled():
            losses.append((log_probs.shape[-1], loss.item()))
        return loss

    monkeypatch.setattr(asr.training.steps, "ctc_loss", recording_ctc_loss)
    config = tiny_config(tmp_path / "run", tone_corpus, model={"phone_ctc_weight": 0.5, "phone_ctc_layer": 1})
    state = train(config)
    assert len(calls) == 1 and (tmp_path / "run" / "phones.json").exists()
    phone_losses = [loss for size, loss in losses if size == NUM_PHONE_LABELS]
    assert len(phone_losses) == state.step and all(0 < loss < 100 for loss in phone_losses)
    # The optimiser's moments of the phone head are non-zero: its gradients arrived.
    payload = load_checkpoint(tmp_path / "run" / "last.pt")
    names = [name for name, _ in AcousticModel(config.model, config.features.n_mels, 29).named_parameters()]
    moments = payload["train_state"]["optimizer"]["state"][names.index("phone_output.weight")]["exp_avg"]
    assert moments.abs().sum() > 0
    load_model(tmp_path / "run" / "best.pt")  # transcription loads it without espeak-ng


@pytest.mark.parametrize("damage", [b'{"ace": "\xc3', b"\xff\xfe", b'["not", "a", "mapping"]', b'{"ace": 3}'])
def test_a_damaged_phone_cache_is_rebuilt_not_fatal(tmp_path, monkeypatch, damage):
    calls = []
    monkeypatch.setattr(phones, "_espeak", fake_espeak(calls))
    cache = tmp_path / "phones.json"
    cache.write_bytes(damage)
    with pytest.warns(UserWarning, match="unusable phone cache"):
        labels = phonemize(["ace"], cache)
    assert symbols(labels["ace"]) == ["æ", "k", "iː"] and calls == [["ace"]]
    assert json.loads(cache.read_text()) == {"ace": "ækiː"}
