import dataclasses

import pytest
import torch

from asr.config import ModelConfig
from asr.model.network import AcousticModel, BidirectionalRNN, Dropout, reverse_within_lengths


def test_reverse_within_lengths():
    x = torch.arange(8.0).reshape(2, 4, 1)  # (B, T, C)
    out = reverse_within_lengths(x, torch.tensor([4, 2]))
    assert out[:, :, 0].tolist() == [[3, 2, 1, 0], [5, 4, 6, 7]]


@pytest.mark.parametrize(
    "subsampling, factor", [("stack", 3), ("stack", 4), ("conv", 4), ("conv", 2), ("conv", 3), ("conv", 6)]
)
def test_output_lengths_for_odd_inputs(subsampling, factor):
    model = AcousticModel(ModelConfig(subsampling=subsampling, subsampling_factor=factor, num_layers=1,
                                      hidden_size=16), input_dim=80, vocab_size=29).eval()
    lengths = torch.tensor([101, 7, 1, 64])
    features = torch.randn(4, 101, 80)
    log_probs, out_lengths = model(features, lengths)
    expected = (lengths + factor - 1) // factor  # ceil
    assert out_lengths.tolist() == expected.tolist()
    assert log_probs.shape == (4, expected.max().item(), 29)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(4, expected.max().item()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_dropout_drops_a_fraction_p_and_keeps_the_expectation(dtype):
    torch.manual_seed(0)
    dropout = Dropout(0.3)
    x = torch.ones(20, 100, 64, dtype=dtype, requires_grad=True)
    y = dropout(x)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.3) < 0.01
    assert abs(y.float().mean().item() - 1.0) < 0.02  # kept units scaled by 1 / (1 - p)
    y.sum().backward()
    assert torch.equal(x.grad == 0, y.detach() == 0)  # gradient flows through the kept units only
    assert torch.equal(dropout.eval()(x), x)


@pytest.mark.parametrize(
    "cell, subsampling, layer_norm",
    [("lstm", "stack", False), ("gru", "stack", False), ("rnn", "stack", False), ("lstm", "conv", False),
     ("lstm", "stack", True)],
)
def test_padded_equals_packed_and_batch_invariance(cell, subsampling, layer_norm):
    torch.manual_seed(0)
    config = ModelConfig(subsampling=subsampling, cell=cell, num_layers=2, hidden_size=24, dropout=0.0,
                         layer_norm=layer_norm)
    model = AcousticModel(config, 20, 10).eval()
    features = torch.randn(3, 31, 20)
    lengths = torch.tensor([31, 17, 5])
    padded, out_lengths = model(features, lengths)
    model.config = dataclasses.replace(config, rnn_input="packed")
    packed, _ = model(features, lengths)
    for b, n in enumerate(out_lengths.tolist()):
        torch.testing.assert_close(padded[b, :n], packed[b, :n], atol=1e-5, rtol=1e-5)
        # An utterance decoded alone gives the same output as inside a padded batch.
        alone, _ = model(features[b : b + 1, : lengths[b]], lengths[b : b + 1])
        torch.testing.assert_close(padded[b, :n], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_fused_packed_layer_matches_padded_in_outputs_and_gradients(cell):
    """The packed path hands both directions to one bidirectional call (one cuDNN call on a
    GPU); it must compute what the padded two-direction path computes, gradients included,
    and add nothing to the state dict."""
    torch.manual_seed(0)
    layer = BidirectionalRNN(cell, 12, 16)
    assert set(layer.state_dict()) == {f"{d}_rnn.{w}_l0" for d in ("forward", "backward")
                                       for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    x = torch.randn(3, 9, 12)
    lengths = torch.tensor([9, 4, 1])
    valid = (torch.arange(9)[None, :] < lengths[:, None])[:, :, None]  # (B, T, 1): padding is not compared
    results = []
    for packed in (False, True):
        layer.zero_grad()
        out = layer(x, lengths, packed) * valid
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in layer.parameters()]))
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-5)
    for a, b in zip(packed_grads, padded_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_conv_subsampling_puts_time_strides_in_the_last_blocks():
    model = AcousticModel(ModelConfig(subsampling="conv", subsampling_factor=3, conv_layers=2), 80, 29)
    assert model.subsampler.time_strides == [1, 3]
    with pytest.raises(ValueError, match="conv_layers"):  # refused by the config (ConfigError), before any model
        ModelConfig(subsampling="conv", subsampling_factor=12, conv_layers=2)


def test_weight_dropout_drops_recurrent_weights_in_training_only():
    torch.manual_seed(0)
    config = ModelConfig(num_layers=2, hidden_size=16, dropout=0.0, weight_dropout=0.5)
    model = AcousticModel(config, 20, 10)
    reference = AcousticModel(dataclasses.replace(config, weight_dropout=0.0), 20, 10)
    reference.load_state_dict(model.state_dict())  # same parameters: no extra state
    features, lengths = torch.randn(2, 12, 20), torch.tensor([12, 7])
    model.eval(), reference.eval()
    torch.testing.assert_close(model(features, lengths)[0], reference(features, lengths)[0])
    model.train()
    first, second = model(features, lengths)[0], model(features, lengths)[0]
    assert not torch.allclose(first, second)  # a fresh mask per call
    first.sum().backward()
    hh = model.layers[0].forward_rnn.weight_hh_l0
    assert hh.grad is not None and (hh.grad == 0).any() and hh.grad.abs().sum() > 0  # dropped entries get none


def test_layer_norm_adds_parameters_only_when_on():
    plain = AcousticModel(ModelConfig(num_layers=2, hidden_size=8), 20, 10)
    normed = AcousticModel(ModelConfig(num_layers=2, hidden_size=8, layer_norm=True), 20, 10)
    assert set(plain.state_dict()) < set(normed.state_dict())  # old checkpoints keep loading
    assert sum(p.numel() for p in normed.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 2 * 16
