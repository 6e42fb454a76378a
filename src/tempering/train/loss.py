"""Causal-LM loss computed only where it counts.

The LM head (hidden × vocabulary, the largest matmul of a small model) runs only at the positions whose
next token carries loss, instead of at every position as ``model(labels=...)`` does: for chat data with
long system/user turns that is most of the head's work saved, with the same loss.

Shared prefixes run once (``packing`` runs them in the same pass as the rows where it can; this is the
two-pass path). When a batch's rows start with the same tokens (``batch["prefix_length"]`` P > 0,
set by ``batching.collate``: a system prompt and template that carry no loss), the decoder runs those P tokens
once for one row, with gradients, and every row's remaining tokens attend to its keys and values, broadcast
to the batch through a ``DynamicCache`` at positions P, P+1, …. Gradients reaching the prefix are summed over
the rows by autograd (the broadcast's backward), so loss and gradients equal the unshared computation; with
LoRA dropout > 0 the prefix's rows share one dropout mask. The same code runs on the CPU (float32) and on a
CUDA GPU (the model's bf16 weights); the logits are upcast to float32 for the loss either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tempering.data.encode import IGNORE_INDEX
from tempering.train import packing


@dataclass
class LossResult:
    loss_sum: torch.Tensor  # summed over trained tokens (differentiable)
    n_tokens: int  # trained tokens
    n_correct: int  # trained tokens whose argmax prediction was right

    @property
    def mean(self) -> torch.Tensor:
        return self.loss_sum / max(self.n_tokens, 1)


def causal_lm(model):
    """The ``*ForCausalLM`` module under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_with_shared_prefix(lm, backbone, batch: dict, prefix: int, width: int, device) -> torch.Tensor:
    """Last hidden states of the batch's first ``width`` positions after the shared ``prefix`` ([rows, width -
    prefix, hidden])."""
    from transformers import DynamicCache

    input_ids = batch["input_ids"][:, :width].to(device)
    rows = input_ids.shape[0]
    shared = DynamicCache(config=lm.config)
    backbone(input_ids=input_ids[:1, :prefix], use_cache=True, cache=shared,
             position_ids=torch.arange(prefix, device=device)[None])
    cache = DynamicCache(config=lm.config)
    for index, layer in enumerate(shared.layers):  # a view per row: autograd sums the rows' gradients
        cache.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), index)
    return backbone(
        input_ids=input_ids[:, prefix:], attention_mask=batch["attention_mask"][:, :width].to(device),
        position_ids=torch.arange(prefix, width, device=device)[None].expand(rows, -1),
        cache=cache, use_cache=True,
    ).last_hidden_state


def sparse_lm_loss(model, batch: dict, label_smoothing: float = 0.0) -> LossResult:
    """Summed cross-entropy over the trained tokens (``label_smoothing``: the training loss's, 0 to score)."""
    lm = causal_lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    device = next(lm.parameters()).device
    prefix = int(batch.get("prefix_length", 0))
    # the last position's state predicts no token of the batch: the decoder runs up to the one before it
    width = batch["input_ids"].shape[1] - 1
    if width <= prefix:  # nothing to predict (a row of one token)
        zero = lm.get_output_embeddings().weight.sum() * 0.0
        return LossResult(loss_sum=zero.float(), n_tokens=0, n_correct=0)
    if packing.usable(lm, batch):
        hidden, own = packing.packed_hidden(backbone, batch, device)  # [tokens, hidden]
        targets = packing.next_tokens(batch, own).to(device)
    else:
        if prefix > 0:
            hidden = hidden_with_shared_prefix(lm, backbone, batch, prefix, width, device)
        else:
            hidden = backbone(input_ids=batch["input_ids"][:, :width].to(device),
                              attention_mask=batch["attention_mask"][:, :width].to(device),
                              use_cache=False).last_hidden_state
        # hidden[:, j] is the state at position prefix + j; it predicts token prefix + j + 1 (none in the prefix)
        targets = batch["labels"][:, prefix + 1 :].to(device)
    positions = targets != IGNORE_INDEX
    selected = hidden[positions]
    logits = lm.get_output_embeddings()(selected).float()
    wanted = targets[positions]
    loss_sum = F.cross_entropy(logits, wanted, reduction="sum", label_smoothing=label_smoothing)
    n_correct = int((logits.detach().argmax(-1) == wanted).sum())
    return LossResult(loss_sum=loss_sum, n_tokens=int(wanted.numel()), n_correct=n_correct)


@torch.inference_mode()
def evaluate(model, examples: list, make_batch, loss_fn=None, batch_size: int = 16, world=None) -> dict:
    """Token-weighted loss, mean token accuracy and perplexity over the trained units of ``examples``
    (tokens for chat, examples for classification); ``make_batch(examples) -> batch``, ``loss_fn(model,
    batch) -> LossResult`` (default: the causal-LM loss). Each process of a multi-process ``world`` scores
    its share, and the sums are added up."""
    loss_fn = loss_fn or sparse_lm_loss
    if not examples:
        return {"loss": None, "mean_token_accuracy": None, "perplexity": None}
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))  # similar lengths, little padding
    if world is not None:
        order = world.shard(order)
    loss_sum, n_tokens, n_correct = 0.0, 0, 0
    for start in range(0, len(order), batch_size):
        result = loss_fn(model, make_batch([examples[i] for i in order[start : start + batch_size]]))
        loss_sum += float(result.loss_sum)
        n_tokens += result.n_tokens
        n_correct += result.n_correct
    model.train(was_training)
    if world is not None:
        loss_sum, n_tokens, n_correct = world.sum([loss_sum, n_tokens, n_correct])
    loss = loss_sum / max(n_tokens, 1)
    return {"loss": loss, "mean_token_accuracy": n_correct / max(n_tokens, 1), "perplexity": math.exp(loss)}
