"""Training end to end on the tone language: overfitting and exact resume."""

import dataclasses
import json
import time

import pytest
import torch

from asr.storage.checkpoint import load_checkpoint
from asr.training.loop import train
from asr.inference.recognizer import load_model

from conftest import OVERFIT_TEXTS, tiny_config


def test_overfit_a_few_utterances(tone_corpus, tmp_path):
    config = tiny_config(
        tmp_path / "overfit", tone_corpus,
        data={"valid_manifest": str(tone_corpus["train"]), "max_frames_per_batch": 400},
        model={"hidden_size": 64},
        train={"epochs": 80, "valid_every_epochs": 80},
        optim={"lr": 5e-3, "warmup_steps": 30, "final_lr_ratio": 0.1},
    )
    state = train(config)
    losses = [json.loads(line)["train_loss"] for line in open(tmp_path / "overfit" / "metrics.jsonl")]
    first_loss = load_first_logged_loss(tmp_path / "overfit")
    final = state.history[-1]
    print(f"overfit: first loss {first_loss:.3f}, final train loss {losses[-1]:.4f}, valid loss {final['valid_loss']:.4f}")
    assert final["valid_loss"] * 10 <= first_loss
    recognizer = load_model(tmp_path / "overfit" / "best.pt")
    results = recognizer.transcribe([u for u in audio_paths(tone_corpus["train"])])
    assert [r.text for r in results] == OVERFIT_TEXTS


def load_first_logged_loss(out_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out_dir / "tensorboard"))
    events.Reload()
    return events.Scalars("train/loss")[0].value


def audio_paths(manifest):
    return [json.loads(line)["audio"] for line in open(manifest)]


@pytest.mark.parametrize("join_fraction", [0.0, 0.5])
def test_resume_reaches_the_same_weights(tone_corpus, tmp_path, join_fraction):
    # Dropout, SpecAugment and VTLP on, so that restoring the RNG states matters; joined
    # utterances must be the same items again after a resume.
    sections = dict(model={"dropout": 0.2}, specaugment={"enabled": True, "time_width": 5, "warp_factor": 0.1},
                    train={"epochs": 3}, data={"max_frames_per_batch": 350, "join_fraction": join_fraction})
    straight = train(tiny_config(tmp_path / "straight", tone_corpus, **sections))
    # Interrupted mid-epoch 2, then the same command again resumes from last.pt.
    interrupted = dict(sections, train={"epochs": 3, "max_steps": straight.step // 3 + 2})
    first = train(tiny_config(tmp_path / "resumed", tone_corpus, **interrupted))
    assert first.step < straight.step and first.batch_in_epoch > 0
    resumed = train(tiny_config(tmp_path / "resumed", tone_corpus, **sections))
    assert resumed.step == straight.step
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "resumed" / "last.pt")["model"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # The record of the epoch cut short says so; the complete records are those of the straight run.
    records = [json.loads(line) for line in open(tmp_path / "resumed" / "metrics.jsonl")]
    assert [(m["epoch"], m.get("partial", False)) for m in records] == [(1, False), (1, True), (2, False), (3, False)]
    assert records[1]["batch_in_epoch"] == first.batch_in_epoch and "batch_in_epoch" not in records[0]
    assert [m["epoch"] for m in straight.history] == [1, 2, 3] and not any("partial" in m for m in straight.history)
    # The 8 training utterances, whether or not some were joined into one input.
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["train_audio"]["utterances"] == 8


def test_an_unreadable_training_file_is_skipped_not_fatal(tone_corpus, tmp_path):
    from asr.data.manifest import read_manifest
    from asr.data.manifest import write_manifest

    utterances = read_manifest(tone_corpus["train"])
    broken = tmp_path / "broken.flac"
    broken.write_bytes(open(utterances[0].audio, "rb").read()[:100])  # truncated: header only
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, [*utterances, utterances[0].__class__("broken", str(broken), "abc", 1.0, "1")])
    config = tiny_config(tmp_path / "run", tone_corpus, data={"train_manifest": str(manifest)}, train={"epochs": 1})
    with pytest.warns(UserWarning, match="skipping utterance broken"):
        state = train(config)
    assert state.epoch == 1


def test_budget_schedule_ends_the_cosine_when_the_time_budget_does(monkeypatch):
    from types import SimpleNamespace

    from asr.training import schedule as train_module
    from asr.config import ConfigError, ExperimentConfig, OptimConfig, TrainConfig
    from asr.training.run import EpochStats, TrainState
    from asr.training.schedule import fit_schedule_to_budget, make_scheduler

    config = ExperimentConfig(optim=OptimConfig(lr=1.0, warmup_steps=10, final_lr_ratio=0.1, schedule="budget"),
                              train=TrainConfig(epochs=100, max_minutes=1.0))
    state = TrainState(epoch=2, step=30)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    # Built before the fit, as in train(): the scheduler must read the fitted length lazily.
    scheduler = make_scheduler(optimizer, config, total_steps=lambda: state.schedule_steps or 10_000)
    lrs = []
    for _ in range(30):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    now = 1000.0
    monkeypatch.setattr(train_module.time, "monotonic", lambda: now)
    run = SimpleNamespace(config=config, state=state, schedule_mark=now - 10.0, train_seconds=lambda: 25.0,
                          schedule_fitted=False)
    fit_schedule_to_budget(run, EpochStats(steps=10))
    # 1 s per step (validation included) and 35 s of the 60 s budget left: 35 more steps.
    assert state.schedule_steps == 65
    for _ in range(45):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[9] == pytest.approx(1.0) and lrs[65] == pytest.approx(0.1) and lrs[74] == pytest.approx(0.1)
    assert lrs[37] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.03)  # half way down the cosine (steps 10-65)
    run.schedule_mark = now - 20.0
    fit_schedule_to_budget(run, EpochStats(steps=10))  # measured once per session, then kept
    assert state.schedule_steps == 65
    run.schedule_fitted = False  # a new session (resumed, maybe elsewhere) measures again: 2 s/step now
    fit_schedule_to_budget(run, EpochStats(steps=10))
    assert state.schedule_steps == 30 + 35 // 2
    # A machine that finishes train.epochs (here 5 x 10 steps) within the budget anneals by then.
    run.schedule_fitted, run.schedule_mark = False, now - 10.0
    run.config = dataclasses.replace(config, train=TrainConfig(epochs=5, max_minutes=1.0))
    fit_schedule_to_budget(run, EpochStats(steps=10))
    assert state.schedule_steps == 50
    with pytest.raises(ConfigError, match="max_minutes"):
        ExperimentConfig(optim=OptimConfig(schedule="budget"))


def test_budget_schedule_is_measured_in_the_second_epoch_and_saved_for_resume(tone_corpus, tmp_path):
    sections = dict(optim={"schedule": "budget"}, train={"epochs": 3, "max_minutes": 30.0})
    state = train(tiny_config(tmp_path / "run", tone_corpus, **sections))
    steps_per_epoch = state.step // 3
    assert state.schedule_steps > 2 * steps_per_epoch  # fitted at the end of epoch 2: 30 minutes hold many more
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["train_state"]["position"]
    assert saved["schedule_steps"] == state.schedule_steps


def test_fp16_on_the_cpu_is_refused_with_a_reason(tone_corpus, tmp_path):
    config = tiny_config(tmp_path / "fp16", tone_corpus, train={"precision": "fp16", "device": "cpu"})
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(config)


def test_the_epoch_log_measures_the_time_spent_waiting_for_data(tone_corpus, tmp_path, monkeypatch):
    from asr.data.dataset import SpeechDataset

    load = SpeechDataset._load

    def slow_load(self, utterance):  # a loader far slower than the tiny model's steps
        time.sleep(0.25)
        return load(self, utterance)

    monkeypatch.setattr(SpeechDataset, "_load", slow_load)
    slow = train(tiny_config(tmp_path / "slow", tone_corpus, data={"cache_audio": False}, train={"epochs": 1}))
    monkeypatch.setattr(SpeechDataset, "_load", load)
    fast = train(tiny_config(tmp_path / "fast", tone_corpus, data={"cache_audio": False}, train={"epochs": 1}))
    assert slow.history[-1]["data_wait_fraction"] > 0.5
    assert fast.history[-1]["data_wait_fraction"] < slow.history[-1]["data_wait_fraction"]


def strict_json_lines(path):
    """Each line parsed by a strict JSON parser: NaN and Infinity are refused."""
    def refuse(constant):
        raise ValueError(f"{path}: {constant} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in open(path, encoding="utf-8")]


def test_metrics_log_each_epoch_once_after_a_kill_between_log_and_checkpoint(tone_corpus, tmp_path):
    import shutil

    out = tmp_path / "run"
    sections = dict(train={"epochs": 3}, data={"max_frames_per_batch": 350})
    steps_per_epoch = train(tiny_config(tmp_path / "probe", tone_corpus, **sections)).step // 3
    train(tiny_config(out, tone_corpus, **dict(sections, train={"epochs": 3, "max_steps": steps_per_epoch})))
    shutil.copy(out / "last.pt", tmp_path / "after-epoch-1.pt")
    train(tiny_config(out, tone_corpus, **sections))
    assert [m["epoch"] for m in strict_json_lines(out / "metrics.jsonl")] == [1, 2, 3]
    # As if killed after logging epoch 3 (and 2) but before last.pt was replaced: the work
    # since the checkpoint is redone, and logged once.
    shutil.copy(tmp_path / "after-epoch-1.pt", out / "last.pt")
    state = train(tiny_config(out, tone_corpus, **sections))
    records = strict_json_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in records] == [1, 2, 3]
    assert records == state.history  # the log is the checkpointed history, rewritten whole


def test_a_resumed_epoch_with_no_batches_left_logs_strict_json(tone_corpus, tmp_path, monkeypatch):
    from asr.training import loop as train_module

    out = tmp_path / "run"
    config = tiny_config(out, tone_corpus, train={"epochs": 2, "checkpoint_every_steps": 1})

    def killed(run, stats):  # the process dies after the epoch's last step was checkpointed
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "end_of_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(config)
    monkeypatch.undo()
    position = load_checkpoint(out / "last.pt")["train_state"]["position"]
    assert position["epoch"] == 0 and position["batch_in_epoch"] > 0  # the epoch's batches are all done
    train(config)
    records = strict_json_lines(out / "metrics.jsonl")
    assert [m["epoch"] for m in records] == [1, 2]
    assert records[0]["train_loss"] is None and records[1]["train_loss"] > 0  # no batch left to average


def test_an_8_khz_config_trains_on_the_features_inference_computes(tone_corpus, tmp_path):
    from asr.data.dataset import frame_counts
    from asr.training.loop import build_run

    features = {"sample_rate": 8000, "n_fft": 200, "win_length": 200, "hop_length": 80, "n_mels": 40}
    config = tiny_config(tmp_path / "run", tone_corpus, features=features, data={"cache_audio": False},
                         train={"epochs": 1})
    train(config)
    recognizer = load_model(tmp_path / "run" / "best.pt")
    assert recognizer.sample_rate == 8000
    seen = []
    recognizer.frontend.register_forward_hook(lambda module, inputs, output: seen.append(output))
    run = build_run(config)  # what training feeds the model (resumed: the same normalisation)
    dataset = run.train_loader.dataset
    counts = frame_counts(dataset.utterances, config.features)
    for index in (0, 3):
        recognizer.transcribe([dataset.utterances[index].audio])
        inference_features, inference_lengths = seen.pop()
        _, waveform, _ = dataset[index]
        train_features, train_lengths = run.frontend(waveform[None], torch.tensor([len(waveform)]))
        assert train_lengths.item() == inference_lengths.item() == counts[index]
        torch.testing.assert_close(train_features, inference_features)


def test_the_train_command_says_when_there_is_no_validation_set(tone_corpus, tmp_path, capsys):
    import yaml

    from asr.cli import main
    from asr.config import to_dict

    config = tiny_config(tmp_path / "run", tone_corpus, data={"valid_manifest": ""}, train={"epochs": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "no validation set" in out and "inf %" not in out
