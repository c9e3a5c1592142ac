import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import asr
from asr.utils.atomic import atomic_write, remove_stale_temporaries, stale_temporaries
from asr.storage.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    ResumeMismatchError,
    build_payload,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from asr.config import ExperimentConfig, from_dict, to_dict
from asr.model.network import AcousticModel
from asr.data.text import CharVocabulary
from asr.inference.recognizer import PrecisionError, load_model


def test_round_trip_transcribes_identically(trained_checkpoint, tone_corpus, tmp_path):
    payload = load_checkpoint(trained_checkpoint)
    assert {"config", "vocabulary", "normalizer", "model"} <= payload.keys()
    assert payload["config"]["features"]["n_mels"] == 80
    assert payload["normalizer"]["std"].shape == (80,)
    copy = tmp_path / "copy.pt"
    save_checkpoint(copy, {k: v for k, v in payload.items() if k not in ("format", "version")})
    files = sorted(tone_corpus["root"].glob("valid/*.flac"))
    a, b = load_model(trained_checkpoint), load_model(copy)
    for x, y in zip(a.transcribe(files), b.transcribe(files)):
        assert x.text == y.text and x.hypothesis.score == pytest.approx(y.hypothesis.score)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"config": {}, "vocabulary": [], "normalizer": {}, "model": {"w": torch.ones(2)}})

    class Unsaveable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(path, {"model": Unsaveable()})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary files left


def test_incompatible_or_foreign_files_fail_clearly(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"format": "asr-checkpoint", "version": CHECKPOINT_VERSION + 1, "asr_version": "9.9"}, old)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(old)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(garbage)
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(bytes(range(256)) * 4)  # read as a legacy pickle: torch's error advises weights_only=False
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as refused:
        load_checkpoint(random_bytes)
    assert "weights_only" not in str(refused.value)  # never pass on advice to unpickle untrusted code
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(1)}, foreign)
    with pytest.raises(CheckpointError, match="not an asr checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


class Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "asr-checkpoint", "version": CHECKPOINT_VERSION, "x": Exploit()}, evil)
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert "pickled code ran" not in capsys.readouterr().out


# --------------------------------------------------------------------------- layout, validation, temporaries

FIXTURES = Path(__file__).parent / "fixtures"


def tiny_checkpoint(path: Path, **model: object) -> Path:
    """A random 8-band model (no training): enough to compare code paths on the same weights."""
    data = to_dict(ExperimentConfig())
    data["features"].update(n_mels=8)
    data["model"].update(num_layers=2, hidden_size=8, dropout=0.0, **model)
    config = from_dict(ExperimentConfig, data)
    vocabulary = CharVocabulary.english()
    torch.manual_seed(0)
    network = AcousticModel(config.model, 8, len(vocabulary))
    save_checkpoint(path, build_payload(config, vocabulary, torch.zeros(8), torch.ones(8), network.state_dict(), {}))
    return path


def test_payload_records_training_audio_durations(trained_checkpoint, tone_corpus):
    from asr.data.manifest import read_manifest

    durations = [u.duration for u in read_manifest(tone_corpus["train"])]
    saved = read_checkpoint(trained_checkpoint)
    assert saved.train_audio is not None
    assert saved.train_audio.max_seconds == pytest.approx(max(durations))
    assert saved.train_audio.mean_seconds == pytest.approx(sum(durations) / len(durations))
    assert saved.train_audio.utterances == len(durations)
    assert load_model(trained_checkpoint).max_train_seconds == pytest.approx(max(durations))


def test_version_1_checkpoint_is_upgraded():
    raw = torch.load(FIXTURES / "tiny-v1.pt", weights_only=True)
    assert raw["version"] == 1 and "train_audio" not in raw  # the fixture really is the old layout
    payload = load_checkpoint(FIXTURES / "tiny-v1.pt")
    assert payload["version"] == CHECKPOINT_VERSION and payload["train_audio"] is None
    assert load_model(FIXTURES / "tiny-v1.pt").max_train_seconds is None


@pytest.mark.parametrize("damage, tensor", [
    (lambda p: p["model"]["output.weight"].__setitem__((0, 0), float("nan")), "output.weight"),
    (lambda p: p["model"]["output.bias"].__setitem__(3, float("inf")), "output.bias"),
    (lambda p: p["normalizer"]["std"].__setitem__(2, 0.0), "normalizer.std"),
    (lambda p: p["normalizer"]["std"].__setitem__(1, -1.0), "normalizer.std"),
    (lambda p: p["normalizer"]["std"].__setitem__(0, float("nan")), "normalizer.std"),
])
def test_nan_weights_or_bad_std_are_refused(tmp_path, damage, tensor):
    payload = load_checkpoint(FIXTURES / "tiny-v1.pt")
    damage(payload)
    path = tmp_path / "damaged.pt"
    save_checkpoint(path, {k: v for k, v in payload.items() if k not in ("format", "version", "asr_version")})
    with pytest.raises(CheckpointError, match=rf"damaged\.pt.*{tensor}"):
        load_model(path)


def test_stale_temporaries_are_removed_and_fresh_ones_kept(tmp_path):
    old = time.time() - 3600
    stale = [tmp_path / ".last.pt.a1b2c3.tmp", tmp_path / ".best.pt.x9y8.tmp", tmp_path / ".epoch-3.pt.q.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
        os.utime(path, (old, old))
    fresh = tmp_path / ".last.pt.another-writer.tmp"  # a writer that started after this process
    fresh.write_bytes(b"")
    unrelated = tmp_path / "notes.tmp"
    unrelated.write_text("mine")
    save_checkpoint(tmp_path / "last.pt", {"config": {}, "vocabulary": [], "normalizer": {}, "model": {}})
    assert not stale[0].exists() and stale[1].exists()  # saving last.pt clears last.pt's leftovers
    assert remove_stale_temporaries(tmp_path, "*.pt") == sorted(stale[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, "last.pt", "notes.tmp"])


def test_atomic_write_names_its_temporary_recognisably(tmp_path):
    target = tmp_path / "settings.yaml"
    with pytest.raises(RuntimeError, match="interrupted"), atomic_write(target) as out:
        out.write("half")
        (temporary,) = [p for p in tmp_path.iterdir()]
        assert temporary.name.startswith(".settings.yaml.") and temporary.name.endswith(".tmp")
        assert stale_temporaries(tmp_path, "settings.yaml", older_than=time.time() + 1) == [temporary]
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as out:
        out.write("whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_resuming_into_a_run_of_another_model_is_refused(trained_checkpoint, tone_corpus, tmp_path):
    from conftest import tiny_config

    from asr.training.loop import train

    shutil.copy(trained_checkpoint.parent / "last.pt", tmp_path / "last.pt")
    old = time.time() - 3600
    leftovers = [tmp_path / ".last.pt.killed.tmp", tmp_path / ".phones.json.killed.tmp"]
    for leftover in leftovers:
        leftover.write_bytes(b"partial")
        os.utime(leftover, (old, old))
    config = tiny_config(tmp_path, tone_corpus, model={"hidden_size": 32}, train={"epochs": 3})
    with pytest.raises(ResumeMismatchError) as caught:
        train(config)
    message = str(caught.value)
    assert str(tmp_path / "last.pt") in message and "model.hidden_size: 48 -> 32" in message
    assert "train.out_dir" in message
    assert all(p.exists() for p in leftovers)  # a refused run deletes nothing of that (other run's) out_dir
    train(tiny_config(tmp_path, tone_corpus, train={"epochs": 2}))  # the run it holds: resumed, already done
    assert not any(p.exists() for p in leftovers)  # cleared once the resume is accepted


def test_atomic_folder_never_replaces_a_folder_created_meanwhile(tmp_path):
    from asr.utils.atomic import atomic_folder

    target = tmp_path / "model"
    with pytest.raises(FileExistsError, match="already exists"), atomic_folder(target) as building:
        (building / "weights").write_text("new")
        target.mkdir()  # another process made it, empty: rename() alone would silently replace it
        (target.parent / "marker").touch()
    assert target.is_dir() and list(target.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marker", "model"]  # the temporary folder is gone


def test_train_audio_round_trips_through_its_dict():
    from asr.storage.checkpoint import TrainAudio, train_audio_of

    audio = train_audio_of([2.0, 4.0], utterances=5)  # two inputs, one of them four joined utterances
    assert audio == TrainAudio(4.0, 3.0, 5)
    assert TrainAudio.from_dict(audio.to_dict()) == audio and TrainAudio.from_dict(None) is None
    assert train_audio_of([2.0, 4.0]).utterances == 2


def test_resume_mismatch_ignores_training_only_keys():
    from asr.storage.checkpoint import network_differences

    saved = to_dict(ExperimentConfig())
    changed = from_dict(ExperimentConfig, {**saved, "model": {**saved["model"], "dropout": 0.3, "rnn_input": "packed"},
                                           "train": {**saved["train"], "epochs": 99}})
    assert network_differences(saved, changed) == []
    wider = from_dict(ExperimentConfig, {**saved, "features": {**saved["features"], "n_mels": 40}})
    assert network_differences(saved, wider) == ["features.n_mels: 80 -> 40"]


def test_bad_precision_is_a_user_error(tmp_path):
    path = tiny_checkpoint(tmp_path / "m.pt")
    with pytest.raises(PrecisionError, match="fp16"):
        load_model(path, precision="fp16")
    with pytest.raises(PrecisionError, match="CPU only"):
        load_model(path, device="cuda", precision="int8")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("rnn_input", ["padded", "packed"])
def test_int8_matches_fp32(tmp_path, cell, rnn_input):
    path = tiny_checkpoint(tmp_path / "m.pt", cell=cell, rnn_input=rnn_input)
    torch.manual_seed(1)
    waveforms = [0.1 * torch.randn(16_000), 0.1 * torch.randn(9_000)]  # unequal lengths: padding matters
    reference, lengths = load_model(path).emissions(waveforms)
    quantized = asr.load_model(path, precision="int8")  # the package-level entry point passes it on
    log_probs, int8_lengths = quantized.emissions(waveforms)
    layer = quantized.model.layers[0].forward_rnn
    assert type(layer).__module__.startswith("torch.ao.nn.quantized.dynamic")  # really int8
    assert torch.equal(lengths, int8_lengths)
    for b, length in enumerate(lengths.tolist()):
        assert torch.allclose(log_probs[b, :length], reference[b, :length], atol=0.05)
    assert not torch.allclose(log_probs, reference, atol=1e-7)  # quantised, not the fp32 weights
