"""A language other than English end to end: training builds its vocabulary from the
transcripts, refuses a validation transcript it cannot spell, keeps a resumed run's vocabulary;
evaluation, tuning, `asr lm build` and `asr lm pronounce` follow the model's data.language; a
Spanish phone head trains and decodes through a Spanish pronunciation lexicon."""

import json
import shutil
import unicodedata

import pytest
import soundfile
from conftest import SAMPLE_RATE, tiny_config, tone_audio, write_arpa

from asr.cli import main
from asr.data.manifest import Utterance, read_manifest, write_manifest
from asr.data.phones import SHARED_PHONES
from asr.data.text import CharVocabulary
from asr.storage.checkpoint import ResumeMismatchError, load_checkpoint
from asr.training.loaders import load_utterances
from asr.training.loop import train

# Normalised (Spanish rules) every character is seen at least twice, but for the ë of "Noë".
SPANISH = ["¡Año nuevo!", "Qué año.", "Niño nuevo", "El niño, ¿qué?", "Buen año, Noé", "El búho", "Búho bueno", "Noë"]
VOCABULARY = [" ", "a", "b", "e", "h", "i", "l", "n", "o", "q", "u", "v", "é", "ñ", "ú"]


def write_corpus(folder, texts, speaker):
    """Tone audio of each transcript's letters without their accents (the audio is beside the point here)."""
    folder.mkdir(parents=True, exist_ok=True)
    utterances = []
    for number, text in enumerate(texts):
        plain = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if c.isascii() and c.isalpha() or c == " ")
        audio = tone_audio(" ".join(plain.split()), seed=number)
        path = folder / f"{speaker}-{number}.flac"
        soundfile.write(path, audio, SAMPLE_RATE)
        utterances.append(Utterance(path.stem, str(path), text, len(audio) / SAMPLE_RATE, speaker))
    return utterances


@pytest.fixture(scope="module")
def spanish_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("spanish")
    write_manifest(root / "train.jsonl", write_corpus(root / "train", SPANISH, "1"))
    write_manifest(root / "valid.jsonl", write_corpus(root / "valid", ["¿Qué niño?", "El búho"], "2"))
    write_manifest(root / "valid_bad.jsonl", write_corpus(root / "bad", ["Qué niño", "Zoë bueno", "Zoë"], "3"))
    return {"root": root, "train": root / "train.jsonl", "valid": root / "valid.jsonl",
            "valid_bad": root / "valid_bad.jsonl"}


def spanish_config(out_dir, corpus, **sections):
    data = {"language": "es", **sections.pop("data", {})}
    return tiny_config(out_dir, corpus, data=data, **sections)


@pytest.fixture(scope="module")
def spanish_model(spanish_corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("spanish_model")
    train(spanish_config(out_dir, spanish_corpus))
    return out_dir / "best.pt"


def test_a_spanish_run_spells_with_the_characters_of_its_normalised_transcripts(spanish_model, spanish_corpus,
                                                                              tmp_path):
    from asr.deploy.package import package_model
    from asr.inference.recognizer import load_model

    payload = load_checkpoint(spanish_model)
    assert payload["vocabulary"] == VOCABULARY and payload["config"]["data"]["language"] == "es"
    recognizer = load_model(spanish_model)
    assert recognizer.vocabulary.tokens[1:] == VOCABULARY
    results = recognizer.transcribe([u.audio for u in read_manifest(spanish_corpus["valid"])])
    assert all(r.ok and not recognizer.vocabulary.unknown_characters(r.text) for r in results)
    package_model(spanish_model, tmp_path / "folder")
    assert json.loads((tmp_path / "folder" / "vocabulary.json").read_text(encoding="utf-8")) == VOCABULARY
    assert load_model(tmp_path / "folder").vocabulary.tokens[1:] == VOCABULARY


def test_rare_characters_are_reported_and_their_utterances_skipped(spanish_corpus, capsys):
    config = spanish_config("unused", spanish_corpus)
    train_utts, valid, vocabulary = load_utterances(config)
    assert vocabulary.tokens[1:] == VOCABULARY
    # Normalised by the Spanish rules; "Noë" (its ë seen once) skipped.
    assert [u.text for u in train_utts] == ["año nuevo", "qué año", "niño nuevo", "el niño qué", "buen año noé",
                                            "el búho", "búho bueno"]
    assert [u.text for u in valid] == ["qué niño", "el búho"]
    logged = capsys.readouterr().err
    assert "rare characters dropped (seen fewer than data.min_token_count=2 times)" in logged and "'ë' (1x)" in logged
    assert "1 with unknown characters ('ë')" in logged
    # A lower minimum count keeps it.
    _, _, vocabulary = load_utterances(spanish_config("unused", spanish_corpus, data={"min_token_count": 1}))
    assert "ë" in vocabulary.tokens


def test_a_validation_transcript_the_vocabulary_cannot_spell_stops_the_run_at_once(spanish_corpus, tmp_path):
    from asr.data.manifest import ManifestError

    config = spanish_config(tmp_path / "run", spanish_corpus, data={"valid_manifest": str(spanish_corpus["valid_bad"])})
    with pytest.raises(ManifestError, match=r"valid_bad.jsonl:2: the transcript of 3-1, 'zoë bueno', holds "
                                            r"'z' \(0x in training\), 'ë' \(1x in training\).*\(and 1 more lines\)"):
        train(config)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_english_keeps_its_vocabulary_and_skips_what_it_cannot_spell(spanish_corpus, tone_corpus):
    config = tiny_config("unused", tone_corpus, data={"valid_manifest": str(spanish_corpus["valid"])})
    _, valid, vocabulary = load_utterances(config)
    assert vocabulary.tokens == CharVocabulary.english().tokens
    assert [u.text for u in valid] == []  # é and ñ are outside English's letters: skipped, as ever


def test_a_resumed_run_keeps_its_vocabulary_and_its_language(spanish_corpus, tmp_path, capsys):
    interrupted = spanish_config(tmp_path / "run", spanish_corpus, train={"max_steps": 1})
    train(interrupted)
    more = tmp_path / "more.jsonl"  # the data grows a frequent z and ë: a new run would spell them
    write_manifest(more, write_corpus(tmp_path / "more", [*SPANISH, "Zoë zoë", "zoë"], "1"))
    train(spanish_config(tmp_path / "run", {**spanish_corpus, "train": more}))
    assert load_checkpoint(tmp_path / "run" / "last.pt")["vocabulary"] == VOCABULARY
    assert "vocabulary: the resumed run's 15 characters" in capsys.readouterr().err
    with pytest.raises(ResumeMismatchError, match="data.language: 'es' -> 'ca'"):
        train(tiny_config(tmp_path / "run", spanish_corpus, data={"language": "ca"}))


def test_evaluation_and_tuning_normalise_references_by_the_models_language(spanish_model, spanish_corpus):
    from asr.inference.recognizer import load_model
    from asr.scoring.evaluate import evaluate
    from asr.scoring.tune import compute_emissions

    audio = read_manifest(spanish_corpus["valid"])[0].audio
    # Spanish writes no apostrophe inside words: it is a space; by English rules "qué'niño" would be one
    # word with a character the model cannot spell, and skipped.
    utterances = [Utterance("u1", audio, "¡Qué'NIÑO!", 1.0)]
    recognizer = load_model(spanish_model)
    report = evaluate(recognizer, utterances)
    assert not report.skipped and [s.reference for s in report.scores] == ["qué niño"]
    assert compute_emissions(recognizer, utterances, "fingerprint").references == ["qué niño"]


@pytest.fixture
def fake_lmplz(tmp_path, monkeypatch):
    """A stand-in lmplz that keeps the corpus it is given (tmp_path/corpus) and prints a tiny ARPA."""
    arpa = write_arpa(tmp_path / "tiny.arpa", {"qué": -0.5}, {"qué qué": -0.3})
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "lmplz").write_text(f"#!/bin/sh\ncat > {tmp_path}/corpus\ncat {arpa}\n")
    (tmp_path / "bin" / "lmplz").chmod(0o755)
    monkeypatch.setenv("ASR_KENLM_BIN", str(tmp_path / "bin"))


def test_lm_build_follows_the_models_language_and_characters(spanish_model, tmp_path, fake_lmplz, capsys):
    text = tmp_path / "text.txt"
    text.write_text("¡Qué niño! Él vió a Zoë.\nEl búho, ¿qué?\n", encoding="utf-8")
    assert main(["lm", "build", str(text), str(tmp_path / "lm.arpa"), "--model", str(spanish_model)]) == 0
    # Spanish rules, and the words the model cannot spell (vió: ó, zoë: z and ë) left out.
    assert (tmp_path / "corpus").read_text(encoding="utf-8") == "qué niño él a\nel búho qué\n"
    assert main(["lm", "build", str(text), str(tmp_path / "lm.arpa"), "--language", "es"]) == 0
    assert (tmp_path / "corpus").read_text(encoding="utf-8") == "qué niño él vió a zoë\nel búho qué\n"
    assert main(["lm", "build", str(text), str(tmp_path / "lm.arpa"), "--language", "Spanish!"]) == 2
    assert "--language must be an ISO 639" in capsys.readouterr().err


def test_lexicons_follow_the_language():
    from asr.lm.lexicon import lexicon_from_words

    vocabulary = CharVocabulary([" ", "'", "a", "d", "e", "i", "j", "l", "o", "u", "r", "h", "m", "n"])
    assert list(lexicon_from_words(["Aujourd'hui", "L'homme"], vocabulary, "fr").spellings) == ["aujourd'hui",
                                                                                                 "l'homme"]
    assert list(lexicon_from_words(["Aujourd'hui", "Mano"], vocabulary, "es").spellings) == ["mano"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
def test_a_spanish_phone_head_trains_and_decodes_through_spanish_pronunciations(spanish_corpus, tmp_path, capsys):
    from asr.decoding.settings import DecodingSettings
    from asr.inference.recognizer import load_model
    from asr.lm.lexicon import LanguageModelError
    from asr.lm.pronunciations import read_pronunciations
    from asr.scoring.tune import TuningRequest, tune_model

    config = spanish_config(tmp_path / "run", spanish_corpus, model={"phone_ctc_weight": 0.5, "phone_ctc_layer": 1},
                            train={"epochs": 1})
    train(config)
    assert "voice es" in capsys.readouterr().err
    assert "ɲ" in json.loads((tmp_path / "run" / "phones.json").read_text(encoding="utf-8"))["año nuevo"]
    head = load_checkpoint(tmp_path / "run" / "best.pt")["model"]["phone_output.weight"]
    assert head.shape[0] == len(SHARED_PHONES)  # the inventory every language but English shares

    words = tmp_path / "words.txt"
    words.write_text("Año\nniño\nbúho\n", encoding="utf-8")
    lexicon = tmp_path / "lexicon.txt"
    assert main(["lm", "pronounce", str(words), str(lexicon), "--model", str(tmp_path / "run" / "best.pt")]) == 0
    lines = lexicon.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "año\ta ɲ o" and len(lines) == 3
    assert (tmp_path / "lexicon.txt.espeak-es.json").exists()
    with pytest.raises(LanguageModelError, match="no usable words"):  # English has no ɲ, nor a short u
        read_pronunciations(lexicon, "en")
    assert list(read_pronunciations(lexicon, "es").spellings) == ["año", "niño", "búho"]

    recognizer = load_model(tmp_path / "run" / "best.pt",
                            decoding=DecodingSettings("beam", None, str(lexicon), units="phones"))
    assert recognizer.decoding_problem is None and recognizer.units == "phones"
    results = recognizer.transcribe([u.audio for u in read_manifest(spanish_corpus["valid"])])
    assert all(r.ok and set(r.text.split()) <= {"año", "niño", "búho"} for r in results)
    # tune-lm decodes the Spanish phone head through the same lexicon (English's 49 labels would not fit it).
    arpa = write_arpa(tmp_path / "es.arpa", {"año": -0.5, "niño": -0.6, "búho": -0.7}, {"año niño": -0.3})
    request = TuningRequest(arpa, [0.0, 1.0], [0.0], 5, 25.0, phone_lexicon=str(lexicon), units=["phones"])
    outcome = tune_model(tmp_path / "run" / "best.pt", spanish_corpus["valid"], request, out=tmp_path / "tuned.yaml")
    assert outcome.chosen == "phones" and len(outcome.results["phones"].rows) == 2


def test_a_spanish_model_exports_and_streams_with_its_characters(spanish_model, spanish_corpus, tmp_path, capsys):
    """No code path assumes English: the exported graph carries the Spanish characters, and a
    latency-controlled Spanish model streams the text of its whole-utterance pass."""
    import torch

    from asr.inference.recognizer import load_model

    out = tmp_path / "model.ts"
    assert main(["export", str(spanish_model), str(out)]) == 0
    extra = {"vocabulary.json": "", "config.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["vocabulary.json"])[1:] == VOCABULARY
    assert json.loads(extra["config.json"])["data"]["language"] == "es"

    stream_dir = tmp_path / "stream"
    train(spanish_config(stream_dir, spanish_corpus, train={"epochs": 3},
                         model={"direction": "latency_controlled", "chunk_steps": 4, "right_steps": 2},
                         features={"normalization": "causal"}))
    files = [u.audio for u in read_manifest(spanish_corpus["valid"])]
    capsys.readouterr()
    assert main(["transcribe", str(stream_dir / "last.pt"), *files, "--stream", "--no-pace", "--format", "json",
                 "--greedy", "--piece-ms", "50"]) == 0
    streamed = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert streamed == [r.text for r in load_model(stream_dir / "last.pt").transcribe(files)]
