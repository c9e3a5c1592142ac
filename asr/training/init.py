"""Fine-tuning (train.init_from): a new run's network started from a trained model.

A model that already learnt to listen needs less speech to learn a new language or domain than
one that starts from random weights. Its front end and recurrent layers are taken as they are,
so the architecture must match (:func:`read_init_model` names every field that differs). The
output layer's rows are taken for the characters both vocabularies hold and start fresh for the
others; the phone head's likewise by phone symbol (English's inventory and the one all other
languages share agree on English's phones). The normalisation statistics are recomputed from
the new data, or kept (train.init_normalization). For the first train.freeze_steps steps the
front end and the lowest train.freeze_layers recurrent layers take no updates
(:func:`frozen_parameters`), so that the fresh output rows' first, large gradients cannot
undo what those layers learnt.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from asr.config import ExperimentConfig, to_dict
from asr.data.phones import phone_inventory
from asr.data.text import BLANK, CharVocabulary
from asr.errors import AsrError
from asr.model.features import FeatureFrontend
from asr.model.network import AcousticModel
from asr.storage.checkpoint import Checkpoint, architecture_differences
from asr.storage.model_folder import read_model
from asr.training.logs import log

HEADS = ("output.", "phone_output.")  # the layers whose rows are labels: taken row by row


class InitFromError(AsrError):
    """train.init_from names a model whose network differs from the one the config asks for."""


def read_init_model(config: ExperimentConfig) -> Checkpoint:
    """train.init_from read (a checkpoint, a model folder or an hf:// reference) and checked
    to have the network the config asks for."""
    source = read_model(config.train.init_from)
    differences = architecture_differences(to_dict(source.config), config)
    if differences:
        raise InitFromError(
            f"train.init_from={config.train.init_from}: that model's network differs from the one this config asks "
            f"for ({'; '.join(differences)}); fine-tuning takes its layers as they are: set these keys to the "
            "model's values"
        )
    return source


def row_sources(labels: Sequence[str], source_labels: Sequence[str]) -> list[int | None]:
    """For each output label, the row of the same label in the source's output layer, or None."""
    rows = {label: row for row, label in enumerate(source_labels)}
    return [rows.get(label) for label in labels]


@torch.no_grad()
def copy_rows(layer: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor, sources: Sequence[int | None]) -> int:
    """Set ``layer``'s rows to the source rows ``sources`` names (the others keep their fresh
    initialisation); returns how many were taken."""
    taken = [(row, source) for row, source in enumerate(sources) if source is not None]
    if taken:
        rows, source_rows = (torch.tensor(column) for column in zip(*taken))
        layer.weight[rows] = weight[source_rows].to(layer.weight)
        layer.bias[rows] = bias[source_rows].to(layer.bias)
    return len(taken)


def start_from(model: AcousticModel, frontend: FeatureFrontend, source: Checkpoint, vocabulary: CharVocabulary,
               config: ExperimentConfig, say: Callable[[str], None] = log) -> None:
    """Put ``source``'s weights into a new run's ``model`` (and its normalisation statistics into
    ``frontend`` when train.init_normalization is keep), as the module docstring says."""
    body = {name: value for name, value in source.model_state.items() if not name.startswith(HEADS)}
    missing, unexpected = model.load_state_dict(body, strict=False)
    left_out = [name for name in missing if not name.startswith(HEADS)]
    if left_out or unexpected:  # the architecture check makes this a bug, not a user's mistake
        raise RuntimeError(f"{source.source}: weights missing {left_out}, unexpected {unexpected}")
    state = source.model_state
    chars = copy_rows(model.output, state["output.weight"], state["output.bias"],
                      row_sources(vocabulary.tokens, source.vocabulary.tokens))
    new = [token for token in vocabulary.tokens if token not in source.vocabulary.tokens]
    message = (f"init from {source.source}: front end and {config.model.num_layers} recurrent layers taken; output "
               f"rows of {chars} of {len(vocabulary)} labels taken, {len(new)} new ({''.join(new)!r})")
    if model.phone_output is not None:
        message += "; " + _start_phone_head(model, source, config)
    if config.train.init_normalization == "keep":
        frontend.normalizer.mean.copy_(source.normalizer_mean)
        frontend.normalizer.std.copy_(source.normalizer_std)
    say(f"{message}; normalisation statistics {'kept' if config.train.init_normalization == 'keep' else 'recomputed'}")


def _start_phone_head(model: AcousticModel, source: Checkpoint, config: ExperimentConfig) -> str:
    """The phone head's rows by phone symbol, when the source has a head on the same layer."""
    if "phone_output.weight" not in source.model_state:
        return "phone head new (the model has none)"
    if source.config.model.phone_ctc_layer != config.model.phone_ctc_layer:
        return (f"phone head new (the model's reads layer {source.config.model.phone_ctc_layer}, "
                f"this one layer {config.model.phone_ctc_layer})")
    labels = [BLANK, *phone_inventory(config.data.language).symbols]
    source_labels = [BLANK, *phone_inventory(source.config.data.language).symbols]
    taken = copy_rows(model.phone_output, source.model_state["phone_output.weight"],
                      source.model_state["phone_output.bias"], row_sources(labels, source_labels))
    return f"phone head rows of {taken} of {len(labels)} phones taken"


def frozen_parameters(model: AcousticModel, layers: int) -> list[torch.nn.Parameter]:
    """The front end's and the lowest ``layers`` recurrent layers' (with their LayerNorms) parameters."""
    if layers == 0:
        return []
    lower = [model.subsampler, *model.layers[:layers], *model.norms[:layers]]
    return [parameter for module in lower for parameter in module.parameters()]
