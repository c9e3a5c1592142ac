"""Model folders (asr package): round trip, no pickle, damaged files, the Hub, frozen fixtures."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import write_arpa
from fixtures.make_fixtures import probe_waveform

from asr.storage.checkpoint import CheckpointError, load_checkpoint
from asr.cli import main
from asr.decoding.settings import load_decoding_settings
from asr.errors import AsrError
from asr.deploy.package import package_model
from asr.storage.model_folder import (
    DECODING_FILE,
    FOLDER_VERSION,
    PackageError,
    read_model_folder,
    tuned_settings_file,
    weights_file,
)
from asr.storage.hub import HubError
from asr.inference.recognizer import load_model

FIXTURES = Path(__file__).parent / "fixtures"


def front_matter(card: str) -> dict:
    _, header, _ = card.split("---\n", 2)
    return yaml.safe_load(header)


@pytest.fixture(scope="module")
def packaged(trained_checkpoint, tone_corpus, tmp_path_factory) -> dict[str, Path]:
    """The trained checkpoint, with tuned decoding settings naming an LM, packaged with an evaluation and a sample."""
    root = tmp_path_factory.mktemp("package")
    checkpoint = root / "model.pt"
    shutil.copy(trained_checkpoint, checkpoint)
    arpa = write_arpa(root / "words.arpa", {"bad": -1.0, "cab": -1.0, "a": -0.8, "dab": -1.2},
                      {"bad cab": -0.3, "a dab": -0.3})
    (root / "model.pt.decoding.yaml").write_text(yaml.safe_dump(
        {"method": "beam", "lm": arpa, "lexicon": None, "beam": {"beam_size": 8, "lm_weight": 0.5}}))
    sample = min(tone_corpus["root"].glob("valid/*.flac"))
    folder = root / "folder"
    report = package_model(checkpoint, folder, {"tones": tone_corpus["valid"]}, sample=sample,
                           datasets=["tone-language"])
    return {"checkpoint": checkpoint, "folder": folder, "report": report, "sample": sample}


def test_folder_transcribes_exactly_like_the_checkpoint(packaged, tone_corpus):
    files = sorted(tone_corpus["root"].glob("valid/*.flac"))
    from_file, from_folder = load_model(packaged["checkpoint"]), load_model(packaged["folder"])
    waveforms = [probe_waveform(), probe_waveform()[:5000]]
    a, b = from_file.emissions(waveforms), from_folder.emissions(waveforms)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert [r.text for r in from_file.transcribe(files)] == [r.text for r in from_folder.transcribe(files)]
    assert from_folder.max_train_seconds == from_file.max_train_seconds is not None


def test_folder_holds_settings_lm_card_and_sample(packaged, tone_corpus):
    folder = packaged["folder"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", DECODING_FILE, "model.safetensors", "sample.flac",
                     "vocabulary.json", "words.arpa"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "asr-model" and meta["format_version"] == FOLDER_VERSION
    assert meta["config"]["model"]["hidden_size"] == 48
    stored = yaml.safe_load((folder / DECODING_FILE).read_text())
    assert stored["lm"] == "words.arpa"  # relative: the folder can move
    settings = load_decoding_settings(tuned_settings_file(folder))
    assert settings.lm == str(folder / "words.arpa") and settings.beam.lm_weight == 0.5
    card = (folder / "README.md").read_text()
    header = front_matter(card)
    assert header["language"] == ["en"] and header["pipeline_tag"] == "automatic-speech-recognition"
    assert header["license"] == "apache-2.0" and header["datasets"] == ["tone-language"]
    (result,) = packaged["report"].evaluations
    (entry,) = header["model-index"][0]["results"]
    assert entry["dataset"]["name"] == "tones"
    metrics = {m["type"]: m["value"] for m in entry["metrics"]}
    assert metrics == {"wer": round(100 * result.wer, 2), "cer": round(100 * result.cer, 2)}
    assert "beam 8" in packaged["report"].decoding  # measured with the folder's tuned LM decoding
    assert f"> {packaged['report'].sample_text}" in card


def test_card_and_report_name_the_folders_files_not_the_build_folder(packaged, capsys):
    card = (packaged["folder"] / "README.md").read_text()
    assert "LM words.arpa (weight 0.5" in card and "LM words.arpa" in packaged["report"].decoding
    for text in (card, packaged["report"].decoding):
        assert ".tmp" not in text and str(packaged["folder"].parent) not in text
        assert not any(word.startswith("/") for word in text.split())  # no absolute path at all


def test_card_evaluation_equals_asr_evaluate(packaged, tone_corpus, capsys):
    assert main(["evaluate", str(packaged["folder"]), str(tone_corpus["valid"]), "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert f"using tuned decoding settings from {packaged['folder'] / DECODING_FILE}" in captured.err
    (result,) = packaged["report"].evaluations
    assert f"WER {100 * result.wer:.2f} %" in captured.out and f"CER {100 * result.cer:.2f} %" in captured.out


def test_card_without_evaluations_has_no_model_index(tmp_path):
    package_model(FIXTURES / "tiny-v1.pt", tmp_path / "m")
    header = front_matter((tmp_path / "m" / "README.md").read_text())
    assert "model-index" not in header and "datasets" not in header


def test_folder_loads_without_any_pickle(packaged, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load"), (pickle, "Unpickler")):
        monkeypatch.setattr(module, name, refuse)
    recognizer = load_model(packaged["folder"])
    (result,) = recognizer.transcribe([packaged["sample"]])
    assert result.ok
    with pytest.raises(CheckpointError, match="pickle used"):  # the patch does catch a checkpoint load
        load_model(packaged["checkpoint"])


def copy_fixture_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(FIXTURES / f"tiny-folder-v{FOLDER_VERSION}", folder)
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_weight(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    tensors["model.output.weight"][0, 0] = float("nan")
    save_file(tensors, path)


@pytest.mark.parametrize("damage, file, reason", [
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors", "missing"),
    (lambda f: truncate(f / "model.safetensors"), "model.safetensors", "not a readable safetensors"),
    (lambda f: nan_weight(f / "model.safetensors"), "model.safetensors", "output.weight holds 1 NaN"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json", "not readable JSON"),
    (lambda f: (f / "config.json").unlink(), "config.json", "missing"),
    (lambda f: (f / "config.json").write_text('{"format": "other"}'), "config.json", "not an asr model folder"),
    (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"format_version": 1', '"format_version": 99')), "config.json",
     "version 99"),
    (lambda f: (f / "config.json").write_text(
        (f / "config.json").read_text().replace('"hidden_size": 8', '"hidden_size": "big"')), "config.json",
     "hidden_size"),
    (lambda f: (f / "vocabulary.json").write_text('{"a": 1}'), "vocabulary.json", "not a JSON list"),
])
def test_damaged_folder_files_are_named(tmp_path, damage, file, reason):
    folder = copy_fixture_folder(tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError, match=reason) as caught:
        load_model(folder)
    assert str(folder / file) in str(caught.value)


def test_packaging_is_atomic_and_never_overwrites(tmp_path):
    out = tmp_path / "m"
    with pytest.raises(AsrError, match="missing.jsonl"):  # fails after the files were written
        package_model(FIXTURES / "tiny-v1.pt", out, {"dev": tmp_path / "missing.jsonl"})
    assert list(tmp_path.iterdir()) == []  # neither a half folder nor its temporary
    out.mkdir()
    with pytest.raises(PackageError, match="already exists"):
        package_model(FIXTURES / "tiny-v1.pt", out)
    long_sample = tmp_path / "long.wav"
    soundfile.write(long_sample, np.zeros(31 * 16_000, dtype=np.float32), 16_000)
    with pytest.raises(PackageError, match="long.wav: the sample is 31 s long"):
        package_model(FIXTURES / "tiny-v1.pt", tmp_path / "n", sample=long_sample)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.wav", "m"]


def test_cli_package_then_transcribe_the_folder(tmp_path, tone_corpus, capsys):
    out = tmp_path / "m"
    assert main(["package", str(FIXTURES / "tiny-v1.pt"), str(out), "--eval", f"tones={tone_corpus['valid']}",
                 "--name", "tiny"]) == 0
    assert "tones: WER" in capsys.readouterr().out
    assert front_matter((out / "README.md").read_text())["model-index"][0]["name"] == "tiny"
    audio = tmp_path / "probe.wav"
    soundfile.write(audio, probe_waveform().numpy(), 16_000)
    assert main(["transcribe", str(out), str(audio)]) == 0
    from_folder = capsys.readouterr().out
    assert main(["transcribe", str(FIXTURES / "tiny-v1.pt"), str(audio)]) == 0
    assert capsys.readouterr().out == from_folder
    assert main(["package", str(FIXTURES / "tiny-v1.pt"), str(tmp_path / "n"), "--eval", "no-equals-sign"]) == 2
    assert "NAME=MANIFEST" in capsys.readouterr().err


def test_tune_lm_accepts_a_folder(tmp_path, tone_corpus, capsys):
    folder = copy_fixture_folder(tmp_path)
    assert weights_file(folder) == folder / "model.safetensors"
    arpa = write_arpa(tmp_path / "lm.arpa", {"bad": -1.0, "cab": -1.0}, {"bad cab": -0.3})
    tune = ["--lm", arpa, "--lm-weights", "0.5", "--word-scores=0", "--beam", "4", "--workers", "1"]
    assert main(["tune-lm", str(folder), str(tone_corpus["valid"]), *tune]) == 0
    # The LM is copied into the folder and named relative to it: the folder can still move.
    assert yaml.safe_load((folder / DECODING_FILE).read_text())["lm"] == "lm.arpa"
    assert (folder / "lm.arpa").read_text() == Path(arpa).read_text()
    moved = tmp_path / "moved"
    folder.rename(moved)
    Path(arpa).unlink()
    assert load_decoding_settings(moved / DECODING_FILE).lm == str(moved / "lm.arpa")
    assert main(["evaluate", str(moved), str(tone_corpus["valid"]), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"using tuned decoding settings from {moved / DECODING_FILE}" in err and "decoding: beam 4, LM" in err
    # Tuned again with the folder's own copy: nothing to copy, the name stays.
    assert main(["tune-lm", str(moved), str(tone_corpus["valid"]), *tune[:1], str(moved / "lm.arpa"), *tune[2:]]) == 0
    assert yaml.safe_load((moved / DECODING_FILE).read_text())["lm"] == "lm.arpa"


def test_tune_lm_refuses_to_write_into_the_hub_cache(tmp_path, tone_corpus, monkeypatch, capsys):
    import huggingface_hub

    cache = copy_fixture_folder(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: str(cache))
    arpa = write_arpa(tmp_path / "lm.arpa", {"bad": -1.0, "cab": -1.0}, {"bad cab": -0.3})
    tune = [str(tone_corpus["valid"]), "--lm", arpa, "--lm-weights", "0.5", "--word-scores=0", "--beam", "4",
            "--workers", "1"]
    assert main(["tune-lm", "hf://someone/tiny", *tune]) == 2
    assert "give --out FILE" in capsys.readouterr().err
    assert not (cache / DECODING_FILE).exists()
    assert main(["tune-lm", "hf://someone/tiny", *tune, "--out", str(tmp_path / "tuned.yaml")]) == 0
    assert load_decoding_settings(tmp_path / "tuned.yaml").lm == str(Path(arpa).resolve())
    assert not (cache / DECODING_FILE).exists()


# --------------------------------------------------------------------------- the Hub, without network


def test_hub_reference_downloads_a_snapshot(tmp_path, monkeypatch):
    import huggingface_hub

    folder = copy_fixture_folder(tmp_path)
    calls = []

    def snapshot_download(repo_id, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, revision, local_files_only))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    recognizer = load_model("hf://someone/tiny@v1")
    assert calls == [("someone/tiny", "v1", False)]
    assert recognizer.vocabulary.tokens == load_model(folder).vocabulary.tokens
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_model("hf://someone/tiny")
    assert calls[-1] == ("someone/tiny", None, True)  # offline: the local cache only
    assert tuned_settings_file("hf://someone/tiny") == folder / DECODING_FILE


def test_cli_looks_a_hub_model_up_once(tmp_path, tone_corpus, monkeypatch, capsys):
    import huggingface_hub

    folder = copy_fixture_folder(tmp_path)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kwargs: calls.append(repo_id) or str(folder))
    audio = min(tone_corpus["root"].glob("valid/*.flac"))
    assert main(["transcribe", "hf://someone/tiny", str(audio)]) == 0
    assert calls == ["someone/tiny"]  # not again for the tuned settings' file (each lookup may go online)


def test_hub_errors_are_clear(tmp_path, monkeypatch):
    import huggingface_hub

    def not_cached(repo_id, revision=None, local_files_only=False, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no cached snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", not_cached)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set and the model is not in the local cache"):
        load_model("hf://someone/tiny")
    with pytest.raises(HubError, match="hf://ORG/NAME"):
        load_model("hf://no-slash")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(HubError, match=r"pip install 'lstm-asr\[hub\]'"):
        load_model("hf://someone/tiny")


def test_push_to_hub_uploads_the_folder(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private))

        def upload_folder(self, folder_path, repo_id, commit_message=""):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    out = tmp_path / "m"
    assert main(["package", str(FIXTURES / "tiny-v1.pt"), str(out), "--push-to-hub", "someone/tiny"]) == 0
    assert calls == [("create", "someone/tiny", False),
                     ("upload", "someone/tiny", ["README.md", "config.json", "model.safetensors", "vocabulary.json"])]
    assert "https://huggingface.co/someone/tiny" in capsys.readouterr().out


# --------------------------------------------------------------------------- frozen fixtures of every version


def fixture_models() -> list[Path]:
    return sorted(FIXTURES.glob("tiny-v*.pt")) + sorted(FIXTURES.glob("tiny-folder-v*"))


def test_fixtures_exist_for_the_current_versions():
    from asr.storage.checkpoint import CHECKPOINT_VERSION

    names = {p.name for p in fixture_models()}
    assert {"tiny-v1.pt", f"tiny-v{CHECKPOINT_VERSION}.pt", f"tiny-folder-v{FOLDER_VERSION}"} <= names
    assert torch.load(FIXTURES / f"tiny-v{CHECKPOINT_VERSION}.pt", weights_only=True)["version"] == CHECKPOINT_VERSION
    assert CHECKPOINT_VERSION >= 2  # tiny-v1.pt goes through at least one upgrade step


@pytest.mark.parametrize("model", fixture_models(), ids=lambda p: p.name)
def test_fixtures_load_and_transcribe(model, tmp_path):
    recorded = json.loads((FIXTURES / "expected.json").read_text())
    expected = torch.tensor(recorded["log_probs"])
    recognizer = load_model(model)
    assert recognizer.max_train_seconds == recorded["max_train_seconds"].get(model.name)  # None before version 2
    log_probs, lengths = recognizer.emissions([probe_waveform()])
    assert torch.allclose(log_probs[0, : lengths[0]], expected, atol=1e-3)
    audio = tmp_path / "probe.flac"
    soundfile.write(audio, np.concatenate([probe_waveform().numpy()] * 2), 16_000)
    (result,) = recognizer.transcribe([audio])
    assert result.ok and result.text


def test_fixture_folder_reads_like_its_checkpoint():
    folder = read_model_folder(FIXTURES / f"tiny-folder-v{FOLDER_VERSION}")
    checkpoint = load_checkpoint(FIXTURES / "tiny-v1.pt")
    assert folder.model_state.keys() == checkpoint["model"].keys()
    assert all(torch.equal(folder.model_state[k], v) for k, v in checkpoint["model"].items())
