"""Data-parallel training with torchrun on the CPU (gloo backend, 2 processes)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from asr.storage.checkpoint import load_checkpoint
from asr.config import to_dict

from conftest import tiny_config


def write_config(config, folder) -> str:
    """The config as YAML for the torchrun command line."""
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    return str(path)


def torchrun(nproc: int, config_path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "asr", "train", str(config_path), *overrides]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_process_ddp_trains_and_resumes_with_another_world_size(tone_corpus, tmp_path):
    out = tmp_path / "ddp"
    config = tiny_config(out, tone_corpus, train={"epochs": 3, "device": "cpu"}, data={"max_frames_per_batch": 350})
    path = write_config(config, tmp_path)
    # Two ranks, interrupted after 3 steps (mid-epoch 2), ...
    torchrun(2, path, "train.max_steps=3")
    first = load_checkpoint(out / "last.pt")["train_state"]["position"]
    assert first["step"] == 3 and first["epoch"] == 1 and first["batch_in_epoch"] == 2  # global batches
    # ... then resumed and finished by a single process.
    torchrun(1, path)
    final = load_checkpoint(out / "last.pt")["train_state"]["position"]
    assert final["epoch"] == 3
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    # Rank 0 alone logs: one line per validation; the stop inside epoch 2 is marked partial.
    assert [(m["epoch"], m.get("partial", False)) for m in lines] == [(1, False), (1, True), (2, False), (3, False)]
    assert lines[1]["batch_in_epoch"] == 2
    assert (out / "best.pt").exists()


@pytest.mark.slow
def test_elastic_restart_after_a_worker_is_killed(tone_corpus, tmp_path):
    out = tmp_path / "elastic"
    # The budget schedule too: rank 0 measures it and broadcasts it to the other rank.
    config = tiny_config(out, tone_corpus, data={"max_frames_per_batch": 350}, optim={"schedule": "budget"},
                         train={"epochs": 40, "checkpoint_every_steps": 1, "max_minutes": 30.0, "device": "cpu"})
    path = write_config(config, tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
         "-m", "asr", "train", str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)  # one rank dies mid-training
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 0, output[-6000:]
    assert "resumed from" in output  # the restarted workers continued from last.pt
    position = load_checkpoint(out / "last.pt")["train_state"]["position"]
    assert position["epoch"] == 40
    # 40 tiny epochs take far less than 30 minutes, so the epochs cap the fitted length.
    assert "schedule fitted" in output and 0.9 < position["schedule_steps"] / position["step"] < 1.1


def run_or_fail_on_hang(command: list[str], timeout: float, log_path) -> tuple[int, str]:
    """Run torchrun with its output in ``log_path``; if it hangs, kill its workers (each in a
    session of its own, by pid) and torchrun, and fail. Returns (exit code, output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log_path, "w") as log:
        job = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            job.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            workers = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
            for pid in workers:
                os.kill(int(pid), signal.SIGKILL)
            job.kill()
            job.wait()
            pytest.fail(f"the ranks hung (killed after {timeout} s):\n{open(log_path).read()[-3000:]}")
    return job.returncode, open(log_path).read()


@pytest.mark.slow
def test_ranks_stay_in_step_when_one_ranks_batch_is_all_unreadable(tone_corpus, tmp_path):
    from asr.data.dataset import BucketBatchSampler, frame_counts
    from asr.data.manifest import Utterance, read_manifest
    from asr.data.manifest import write_manifest

    broken = tmp_path / "broken.flac"
    broken.write_text("not audio")
    # 10 s is over the batches' 350-frame budget: the file gets a batch of its own, empty once read.
    utterances = [*read_manifest(tone_corpus["train"]), Utterance("broken", str(broken), "abc", 10.0, "1")]
    write_manifest(tmp_path / "train.jsonl", utterances)
    out = tmp_path / "run"
    # A time budget too: its check is another collective that a skipping rank would miss.
    config = tiny_config(out, tone_corpus, data={"train_manifest": str(tmp_path / "train.jsonl"),
                                                 "max_frames_per_batch": 350},
                         train={"epochs": 2, "device": "cpu", "max_minutes": 30.0})
    sampler = BucketBatchSampler(frame_counts(utterances, config.features), 350, seed=config.train.seed,
                                 num_replicas=2)
    empty_batches = 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        empty_batches += sum(batch == [len(utterances) - 1] for batch in sampler._remaining())
    assert empty_batches > 0  # the test's premise: some rank gets the all-unreadable batch
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "asr", "train", write_config(config, tmp_path)]
    returncode, output = run_or_fail_on_hang(command, timeout=180, log_path=tmp_path / "torchrun.log")
    assert returncode == 0, output[-3000:]
    assert "skipping utterance broken" in output
    assert load_checkpoint(out / "last.pt")["train_state"]["position"]["epoch"] == 2
