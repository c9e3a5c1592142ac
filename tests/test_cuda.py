"""The CUDA paths: cuDNN over packed input, autocast, pinned memory with worker processes,
NCCL under torchrun. Skipped without a GPU (CI has none); on a GPU machine the whole suite
also trains its other tests on CUDA, since tiny_config leaves train.device at auto."""

import dataclasses
import json

import pytest
import torch

from asr.storage.checkpoint import load_checkpoint
from asr.config import ModelConfig
from asr.model.network import AcousticModel
from asr.training.loop import train

from conftest import tiny_config
from test_distributed import torchrun, write_config
from test_train import load_first_logged_loss

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.fixture
def no_tf32():
    """cuDNN may use TF32 for fp32 recurrences (10-bit mantissa): off, to compare with the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("cell, rnn_input", [("lstm", "padded"), ("lstm", "packed"), ("gru", "padded"),
                                             ("gru", "packed")])
def test_cudnn_matches_the_cpu_padded_path(cell, rnn_input, no_tf32):
    torch.manual_seed(0)
    config = ModelConfig(cell=cell, num_layers=3, hidden_size=64, dropout=0.0, layer_norm=True)
    cpu_model = AcousticModel(config, 80, 29)
    gpu_model = AcousticModel(dataclasses.replace(config, rnn_input=rnn_input), 80, 29)
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    features = torch.randn(4, 300, 80)
    lengths = torch.tensor([300, 211, 97, 12])
    results = []
    for model, device in ((cpu_model, "cpu"), (gpu_model, "cuda")):
        log_probs, out_lengths = model(features.to(device), lengths.to(device))
        valid = torch.arange(log_probs.shape[1], device=device)[None, :] < out_lengths[:, None]  # (B, T')
        (log_probs * valid[:, :, None]).sum().backward()
        results.append((log_probs.cpu() * valid.cpu()[:, :, None],
                        {n: p.grad.cpu() for n, p in model.named_parameters()}))
    (cpu_out, cpu_grads), (gpu_out, gpu_grads) = results
    torch.testing.assert_close(gpu_out, cpu_out, atol=1e-4, rtol=1e-4)
    for name, grad in cpu_grads.items():
        torch.testing.assert_close(gpu_grads[name], grad, atol=1e-3, rtol=1e-3, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda_learns(tone_corpus, tmp_path, precision):
    config = tiny_config(
        tmp_path / precision, tone_corpus,
        data={"valid_manifest": str(tone_corpus["train"]), "max_frames_per_batch": 400},
        model={"hidden_size": 64},
        train={"epochs": 60, "valid_every_epochs": 60, "precision": precision, "device": "cuda"},
        optim={"lr": 5e-3, "warmup_steps": 30, "final_lr_ratio": 0.1},
    )
    state = train(config)
    first_loss = load_first_logged_loss(tmp_path / precision)
    final = state.history[-1]
    print(f"{precision}: first loss {first_loss:.3f}, valid loss {final['valid_loss']:.4f}, CER {final['valid_cer']:.3f}")
    assert final["valid_loss"] * 5 <= first_loss
    assert final["valid_cer"] < 0.3  # an untrained model gets ~1.0


def test_cuda_training_with_worker_processes_and_pinned_memory_resumes(tone_corpus, tmp_path):
    out = tmp_path / "workers"
    sections = dict(data={"num_workers": 2, "cache_audio": False, "max_frames_per_batch": 350},
                    train={"epochs": 3, "device": "cuda", "precision": "bf16"})
    first = train(tiny_config(out, tone_corpus, data=sections["data"], train={**sections["train"], "max_steps": 5}))
    assert first.step == 5
    final = train(tiny_config(out, tone_corpus, **sections))
    assert final.epoch == 3 and final.step > 5
    metrics = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert all(0 <= m["data_wait_fraction"] < 1 for m in metrics)
    assert load_checkpoint(out / "best.pt")["model"]["output.weight"].device.type == "cpu"  # loads anywhere


@pytest.mark.slow
def test_torchrun_with_nccl_on_one_gpu(tone_corpus, tmp_path):
    out = tmp_path / "nccl"
    config = tiny_config(out, tone_corpus, train={"epochs": 2, "device": "cuda"}, data={"max_frames_per_batch": 350})
    result = torchrun(1, write_config(config, tmp_path))
    assert load_checkpoint(out / "last.pt")["train_state"]["position"]["epoch"] == 2, result.stderr[-2000:]
