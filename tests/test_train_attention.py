"""Grouped-query attention without repeated keys and values (train.attention) computes what transformers' SDPA
path does: the same loss and LoRA gradients, padded batches, shared prefix or not, Llama and Phi-3."""

from __future__ import annotations

import pytest
import torch
from test_fastlora import _batch, _loss_and_grads, _peft

from tempering.train import attention


@pytest.fixture(params=["llama", "phi3"])
def model_dir(request, tiny_model_dir, tiny_phi3_dir):
    return tiny_model_dir if request.param == "llama" else tiny_phi3_dir


@pytest.mark.parametrize("share_prefix", [True, False])
def test_loss_and_gradients_equal_sdpa(model_dir, tokenizer, share_prefix):
    model = _peft(model_dir)
    batch = _batch(tokenizer, share_prefix)
    assert batch["attention_mask"].min() == 0  # padded rows: the mask is given, which is when it differs
    loss, grads = _loss_and_grads(model, batch)
    assert attention.use_for_training(model.get_base_model())
    assert model.get_base_model().config._attn_implementation == attention.ATTENTION
    gqa_loss, gqa_grads = _loss_and_grads(model, batch)
    assert gqa_loss == pytest.approx(loss, abs=1e-5)
    for name, grad in gqa_grads.items():
        assert torch.allclose(grad, grads[name], atol=1e-5, rtol=1e-4), name


def test_generation_through_the_attention_is_unchanged(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    ids = _batch(tokenizer, False)["input_ids"][:1, :12]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    expected = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert attention.use_for_training(model)
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), expected)


@pytest.mark.parametrize(("prefix", "short_row"), [(0, 6), (4, 6), (4, 5)])
def test_models_without_grouped_heads_train_packed_with_the_same_loss(monkeypatch, prefix, short_row):
    # Phi-3-mini's shape (as many key/value heads as query heads) switches too: its batches train packed
    from transformers import LlamaConfig, LlamaForCausalLM

    from tempering.train import packing
    from tempering.train.loss import sparse_lm_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2))
    ids = torch.randint(0, 64, (3, 12))
    ids[:, :prefix] = ids[0, :prefix]
    mask = torch.ones_like(ids)
    mask[1, 9:], mask[2, short_row:] = 0, 0  # a row of prefix + 1 tokens predicts nothing: packed without it
    labels = torch.where(mask.bool(), ids, -100)
    labels[:, : prefix + 1] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "prefix_length": prefix}

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        result = sparse_lm_loss(model, batch)
        result.mean.backward()
        return result.mean.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    padded, padded_grads = loss_and_grads()
    assert attention.use_for_training(model) and packing.usable(model, batch)
    calls, attend = [], packing.attend
    monkeypatch.setattr(packing, "attend", lambda *a, **k: calls.append(1) or attend(*a, **k))
    packed, packed_grads = loss_and_grads()
    assert len(calls) == 2  # both layers attended packed
    assert packed == pytest.approx(padded, abs=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
