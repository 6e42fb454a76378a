"""The training forward of LoRA layers (train.fastlora) computes what PEFT's does: the same loss and gradients
(shared prefix or not, with dropout under the same seed), the base's output with adapters disabled, and PEFT's
own forward wherever it is not the same computation (DoRA)."""

from __future__ import annotations

import pytest
import torch

from tempering.data import encode_chat
from tempering.train import fastlora
from tempering.train.batching import collate
from tempering.train.loss import sparse_lm_loss

SYSTEM = ("You are a banking assistant. Classify the customer's message into one of the bank's intents and answer "
          "with the intent label only.")
QUESTIONS = ["Where is my card?", "I was charged twice for one coffee, why is that", "Top up failed",
             "How do I change my PIN at an ATM abroad?"]


def _batch(tokenizer, share_prefix: bool):
    examples = [encode_chat(tokenizer, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q},
                                        {"role": "assistant", "content": f"label_{i}"}])
                for i, q in enumerate(QUESTIONS)]
    return collate(examples, tokenizer.pad_token_id, share_prefix=share_prefix)


def _peft(folder, dropout: float = 0.0, dora: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder)
    torch.manual_seed(1)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, use_dora=dora,
                                            target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # B starts at zero: make it non-zero so every gradient path counts
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model.train()


def _loss_and_grads(model, batch, seed: int = 7):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    result = sparse_lm_loss(model, batch)
    result.mean.backward()
    return float(result.mean), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(params=["llama", "phi3"])
def model_dir(request, tiny_model_dir, tiny_phi3_dir):
    return tiny_model_dir if request.param == "llama" else tiny_phi3_dir


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("share_prefix", [True, False])
def test_loss_and_gradients_equal_peft(model_dir, tokenizer, dropout, share_prefix):
    model = _peft(model_dir, dropout)
    batch = _batch(tokenizer, share_prefix)
    peft_loss, peft_grads = _loss_and_grads(model, batch)
    assert fastlora.patch(model) == sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
    loss, grads = _loss_and_grads(model, batch)
    assert loss == pytest.approx(peft_loss, abs=1e-5)
    assert grads.keys() == peft_grads.keys()
    for name, grad in grads.items():
        assert torch.allclose(grad, peft_grads[name], atol=1e-5, rtol=1e-4), name
    assert any(float(g.abs().max()) > 1e-4 for n, g in grads.items() if "lora_A" in n)  # a real comparison
    fastlora.unpatch(model)
    assert _loss_and_grads(model, batch)[0] == pytest.approx(peft_loss, abs=1e-6)


def test_disabled_adapters_give_the_base_output(model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    model = _peft(model_dir).eval()
    fastlora.patch(model)
    ids = _batch(tokenizer, False)["input_ids"]
    with torch.no_grad():
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
        adapted = model(input_ids=ids).logits
        expected = base(input_ids=ids).logits
    assert torch.allclose(plain, expected, atol=1e-5)
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapter is on outside the context


def test_dora_keeps_pefts_forward(tiny_model_dir):
    model = _peft(tiny_model_dir, dora=True)
    assert fastlora.patch(model) == 0
