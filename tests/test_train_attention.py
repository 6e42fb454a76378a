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


def test_models_without_grouped_heads_keep_sdpa():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert not attention.use_for_training(model)
    assert model.config._attn_implementation == "sdpa"
