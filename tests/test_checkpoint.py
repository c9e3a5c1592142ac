import pytest
import torch

from asr.checkpoint import CHECKPOINT_VERSION, CheckpointError, load_checkpoint, save_checkpoint
from asr.transcribe import load_model


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
