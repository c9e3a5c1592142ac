"""User errors become one ``error: ...`` line and exit code 2; bugs keep their tracebacks."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from asr.cli import main
from asr.config import ConfigError, to_dict
from asr.data.manifest import ManifestError, Utterance
from asr.data.manifest import write_manifest
from asr.errors import AsrError, DiskFullError, no_space_left
from asr.training.loop import train

from conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def write_config(config, folder: Path) -> str:
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    return str(path)


def unreadable_manifest(folder: Path, count: int = 3) -> Path:
    """A manifest whose audio files are all text renamed .flac."""
    utterances = []
    for number in range(count):
        path = folder / f"bad-{number}.flac"
        path.write_text("not audio")
        utterances.append(Utterance(f"bad-{number}", str(path), "abc", 1.0, "1"))
    write_manifest(folder / "unreadable.jsonl", utterances)
    return folder / "unreadable.jsonl"


def assert_one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_bug_keeps_its_traceback(tone_corpus, tmp_path, monkeypatch):
    import asr.training.loop

    def buggy(config):
        raise ValueError("an internal bug")

    monkeypatch.setattr(asr.training.loop, "train", buggy)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", write_config(tiny_config(tmp_path / "run", tone_corpus), tmp_path)])


def no_espeak(monkeypatch):
    import asr.data.phones

    monkeypatch.setattr(asr.data.phones.shutil, "which", lambda name: None)


def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    "overrides, setup, expected",
    [
        (["model.num_layers=0"], None, "model.num_layers must be >= 1"),
        (["train.epochs=0"], None, "train.epochs must be >= 1"),
        (["data.train_manifest=/nonexistent/train.jsonl"], None, "/nonexistent/train.jsonl"),
        (["model.phone_ctc_weight=0.5", "model.phone_ctc_layer=1"], no_espeak, "needs espeak-ng"),
        (["train.device=cuda"], no_cuda, "train.device=cuda"),
        (["train.device=gpu"], None, "train.device=gpu: not a torch device"),
    ],
)
def test_user_errors_in_training_are_one_line_and_exit_2(tone_corpus, tmp_path, capsys, monkeypatch,
                                                         overrides, setup, expected):
    if setup is not None:
        setup(monkeypatch)
    path = write_config(tiny_config(tmp_path / "run", tone_corpus), tmp_path)
    assert main(["train", path, *overrides]) == 2
    assert expected in assert_one_error_line(capsys)


def test_a_missing_config_file_is_one_line(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in assert_one_error_line(capsys)


def test_a_manifest_of_unreadable_files_names_it_and_the_reasons(tone_corpus, tmp_path, capsys):
    manifest = unreadable_manifest(tmp_path)
    config = tiny_config(tmp_path / "run", tone_corpus, data={"train_manifest": str(manifest)})
    with pytest.warns(UserWarning, match="skipping utterance"):
        with pytest.raises(ManifestError) as raised:
            train(config)
    message = str(raised.value)
    assert str(manifest) in message and "3 unreadable" in message and "bad-0.flac" in message
    with pytest.warns(UserWarning):
        assert main(["train", write_config(config, tmp_path)]) == 2
    assert str(manifest) in assert_one_error_line(capsys)


def full_disk_save(real_save):
    def save(obj, f, *args, **kwargs):  # torch.save onto a full disk: ENOSPC deep inside torch
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    return save


def chained_disk_full_save(obj, f, *args, **kwargs):  # how torch reports it when it opens the file itself
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as err:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("kind", ["dev_full", "chained"])
def test_a_full_disk_is_reported_and_last_pt_stays_intact(tone_corpus, tmp_path, monkeypatch, capsys, kind):
    from asr.storage.checkpoint import load_checkpoint

    out = tmp_path / "run"
    train(tiny_config(out, tone_corpus, train={"epochs": 1}))
    before = (out / "last.pt").read_bytes()
    monkeypatch.setattr(torch, "save", full_disk_save(torch.save) if kind == "dev_full" else chained_disk_full_save)
    config = tiny_config(out, tone_corpus, train={"epochs": 2})
    with pytest.raises(DiskFullError, match="the disk is full") as raised:
        train(config)
    assert str(out) in str(raised.value)
    assert (out / "last.pt").read_bytes() == before
    assert load_checkpoint(out / "last.pt")["train_state"]["position"]["epoch"] == 1
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert main(["train", write_config(config, tmp_path)]) == 2
    assert "the disk is full" in assert_one_error_line(capsys)


def test_no_space_left_finds_enospc_anywhere_in_the_chain():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unexpected pos")  # implicit context, as torch raises it
    except RuntimeError as err:
        assert no_space_left(err).errno == errno.ENOSPC
    assert no_space_left(RuntimeError("unexpected pos")) is None
    assert no_space_left(OSError(errno.EACCES, "Permission denied")) is None


def test_user_error_types_share_the_base():
    from asr.data.audio import AudioError
    from asr.storage.checkpoint import CheckpointError
    from asr.utils.download import DownloadError
    from asr.lm.lexicon import LanguageModelError
    from asr.data.phones import PhonemizerError
    from asr.data.text import OutOfVocabularyError

    for error in (ConfigError, ManifestError, AudioError, CheckpointError, DownloadError, LanguageModelError,
                  PhonemizerError, OutOfVocabularyError, DiskFullError):
        assert issubclass(error, AsrError), error
    import asr

    assert asr.AsrError is AsrError  # library users catch the one base


def test_python_dash_m_asr_train_reports_errors_like_asr_train(tone_corpus, tmp_path):
    # The torchrun entry point: a config error is one line and exit 2, not a traceback.
    path = write_config(tiny_config(tmp_path / "run", tone_corpus), tmp_path)
    result = subprocess.run([sys.executable, "-m", "asr", "train", path, "model.hidden_size=-5"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "model.hidden_size must be >= 1" in result.stderr
