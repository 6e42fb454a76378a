"""Shared prefixes computed once: the loss and the LoRA gradients equal the unshared computation, the prefix
stops before the first trained position, and batches group rows by shared prefix deterministically."""

from __future__ import annotations

import pytest
import torch

from tempering.data import encode_chat
from tempering.train.batching import (
    MIN_SHARED_PREFIX,
    collate,
    epoch_batches,
    shareable_length,
    shared_prefix_length,
)
from tempering.train.loss import sparse_lm_loss

LONG_SYSTEM = ("You are a banking assistant. Classify the customer's message into one of the bank's intents and "
               "answer with the intent label only.")


def _chat(system: str | None, question: str, answer: str) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    return messages + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _examples(tokenizer, system=LONG_SYSTEM):
    questions = ["Where is my card?", "I was charged twice for one coffee, why is that", "Top up failed",
                 "How do I change my PIN at an ATM abroad in a country that uses a different currency?"]
    return [encode_chat(tokenizer, _chat(system, q, f"label_{i}")) for i, q in enumerate(questions)]


def _tiny_phi3(tokenizer):
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
    return model


def _lora(model, dropout=0.0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # B starts at zero; make it non-zero so every gradient path counts
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    result = sparse_lm_loss(model, batch)
    result.mean.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return result, grads


@pytest.fixture(params=["llama", "phi3"])
def lora_model(request, tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir) if request.param == "llama" else _tiny_phi3(tokenizer)
    return _lora(base).train()


def test_shared_prefix_loss_and_gradients_equal_the_unshared_computation(lora_model, tokenizer):
    examples = _examples(tokenizer)
    shared_batch = collate(examples, tokenizer.pad_token_id)
    plain_batch = collate(examples, tokenizer.pad_token_id, share_prefix=False)
    assert shared_batch["prefix_length"] >= MIN_SHARED_PREFIX and plain_batch["prefix_length"] == 0

    shared, shared_grads = _loss_and_grads(lora_model, shared_batch)
    plain, plain_grads = _loss_and_grads(lora_model, plain_batch)

    torch.testing.assert_close(shared.loss_sum, plain.loss_sum, rtol=1e-5, atol=1e-5)
    assert (shared.n_tokens, shared.n_correct) == (plain.n_tokens, plain.n_correct)
    assert shared_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    assert any(g.abs().sum() > 0 for n, g in shared_grads.items() if "k_proj" in n or "qkv_proj" in n)


def test_shared_prefix_loss_equals_the_full_lm_loss(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    batch = collate(_examples(tokenizer), tokenizer.pad_token_id)
    assert batch["prefix_length"] > 0
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        torch.testing.assert_close(sparse_lm_loss(model, batch).mean, full, rtol=1e-5, atol=1e-5)


def test_the_prefix_stops_before_the_first_trained_position(tokenizer):
    examples = _examples(tokenizer)
    prefix = shared_prefix_length(examples)
    for e in examples:
        first = next(j for j, label in enumerate(e.labels) if label != -100)
        assert prefix < first  # the state at prefix-1 predicts token prefix, which carries no loss
        assert e.input_ids[:prefix] == examples[0].input_ids[:prefix]
    # the whole system turn is shared, and the user turn's header: only the question differs
    system_turn = tokenizer.apply_chat_template([{"role": "system", "content": LONG_SYSTEM}], tokenize=False)
    assert prefix >= len(tokenizer(system_turn, add_special_tokens=False)["input_ids"])
    # every row keeps at least one token of its own, even a row that is all prefix
    same = [examples[0], examples[0]]
    assert shared_prefix_length(same) <= shareable_length(examples[0]) < len(examples[0])


def test_rows_that_share_only_the_template_are_not_shared(tokenizer):
    # SmolLM2's template adds a default system prompt when none is given: distinct system messages share none
    systems = ["You are a pirate.", "Answer in French only.", "Be brief and precise, please."]
    rows = [encode_chat(tokenizer, _chat(system, "Hi?", "Hello.")) for system in systems]
    assert shared_prefix_length(rows) == 0
    assert collate(rows, tokenizer.pad_token_id)["prefix_length"] == 0
    defaults = [encode_chat(tokenizer, _chat(None, q, "ok")) for q in ("Hi?", "What time is it now?")]
    assert shared_prefix_length(defaults) >= MIN_SHARED_PREFIX  # the default system prompt is shared


def test_batches_group_rows_by_shared_prefix_deterministically():
    # two prompt families of 32 rows each, shuffled together: most batches should hold one family only
    prompts = [tuple([1 + i % 2] * 20 + [100 + i]) for i in range(64)]
    lengths = [25 + (i * 7) % 11 for i in range(64)]
    batches = epoch_batches(lengths, 8, seed=3, epoch=1, prompts=prompts)
    assert batches == epoch_batches(lengths, 8, seed=3, epoch=1, prompts=prompts)
    assert batches != epoch_batches(lengths, 8, seed=3, epoch=2, prompts=prompts)
    assert sorted(i for b in batches for i in b) == list(range(64))
    pure = sum(len({prompts[i][0] for i in b}) == 1 for b in batches)
    assert pure == len(batches)  # 32 rows per family, batches of 8: no batch needs to mix
    unshared = epoch_batches(lengths, 8, seed=3, epoch=1)
    assert sum(len({prompts[i][0] for i in b}) == 1 for b in unshared) < pure
    # rows sharing nothing fall back to plain length grouping
    distinct = [tuple([i] * 20) for i in range(64)]
    assert epoch_batches(lengths, 8, seed=3, epoch=1, prompts=distinct) == unshared


def test_a_job_reports_prefix_tokens_computed_and_skipped(tiny_model, tmp_path):
    from conftest import write_jsonl

    from tempering.train import TuneConfig, tune
    from tempering.train.artifacts import read_run, resolve_finetuned

    rows = [{"messages": _chat(LONG_SYSTEM, f"Question {'very ' * (i % 5)}number {i}?", f"label_{i % 3}")}
            for i in range(24)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    events = []
    result = tune(TuneConfig(model=tiny_model, training_file=train, validation_file=train, seed=2,
                             hyperparameters={"n_epochs": 1, "batch_size": 8}), on_event=events.append)
    sharing = next(e["data"] for e in events if e["type"] == "prefix_sharing")
    assert sharing["prefix_tokens_computed"] >= 3 * MIN_SHARED_PREFIX  # three batches, each computed once
    assert sharing["prefix_tokens_skipped"] == 7 * sharing["prefix_tokens_computed"]
    folder, meta = resolve_finetuned(result.model_id)
    assert meta["prefix_sharing"] == sharing == read_run(folder.parent)["prefix_sharing"]


def test_shared_prefix_in_bf16_matches_the_unshared_computation(tiny_model_dir, tokenizer):
    # the dtype a CUDA GPU trains in (hardware.select_placement); the same code path, run here on the CPU
    from transformers import AutoModelForCausalLM

    model = _lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)).train()
    examples = _examples(tokenizer)
    shared, shared_grads = _loss_and_grads(model, collate(examples, tokenizer.pad_token_id))
    plain, plain_grads = _loss_and_grads(model, collate(examples, tokenizer.pad_token_id, share_prefix=False))
    torch.testing.assert_close(shared.mean, plain.mean, rtol=2e-2, atol=2e-2)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name].float(), grad.float(), rtol=0.1, atol=0.05, msg=name)


def test_untrained_tails_are_not_computed_and_change_nothing(lora_model, tokenizer):
    # every row ends with tokens that predict nothing trained (the closing newline; a last assistant turn of
    # weight 0 and everything after it): the batch stops at the last trained token, with the same loss and
    # gradients as the model's own loss over the whole rows
    examples = _examples(tokenizer)
    examples.append(encode_chat(tokenizer, _chat(LONG_SYSTEM, "Lost card", "lost_or_stolen_card") + [
        {"role": "user", "content": "And my PIN, is it still the same one as before?"},
        {"role": "assistant", "content": "Yes, your PIN does not change.", "weight": 0}]))
    batch = collate(examples, tokenizer.pad_token_id, share_prefix=False)
    widest = max(len(e) for e in examples)
    assert batch["input_ids"].shape[1] < widest - 10  # the weight-0 turn is gone

    full_ids = torch.full((len(examples), widest), tokenizer.pad_token_id)
    full_labels = torch.full((len(examples), widest), -100)
    full_mask = torch.zeros((len(examples), widest), dtype=torch.long)
    for row, e in enumerate(examples):
        full_ids[row, : len(e)], full_labels[row, : len(e)] = torch.tensor(e.input_ids), torch.tensor(e.labels)
        full_mask[row, : len(e)] = 1
    lora_model.zero_grad(set_to_none=True)
    full = lora_model(input_ids=full_ids, attention_mask=full_mask, labels=full_labels).loss
    full.backward()
    full_grads = {n: p.grad.clone() for n, p in lora_model.named_parameters() if p.requires_grad}

    for trimmed_batch in (batch, collate(examples, tokenizer.pad_token_id)):
        trimmed, grads = _loss_and_grads(lora_model, trimmed_batch)
        assert trimmed.n_tokens == int((full_labels[:, 1:] != -100).sum())
        torch.testing.assert_close(trimmed.mean, full, rtol=1e-5, atol=1e-5)
        for name, grad in full_grads.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("share", [True, False])
def test_packed_batches_equal_the_padded_two_pass_computation(lora_model, tokenizer, monkeypatch, share):
    # the CPU training path packs every batch into one sequence (the prefix once, each row's own tokens after
    # it, no padding); loss and LoRA gradients must equal the padded computation's
    from tempering.train import attention, packing
    from tempering.train.loss import causal_lm

    lm = causal_lm(lora_model)
    assert attention.use_for_training(lm)
    examples = _examples(tokenizer) + [encode_chat(tokenizer, _chat(LONG_SYSTEM, "Hi", "greeting"))]
    batch = collate(examples, tokenizer.pad_token_id, share_prefix=share)
    assert (batch["prefix_length"] >= MIN_SHARED_PREFIX) is share
    assert packing.usable(lm, batch)
    calls, attend = [], packing.attend
    monkeypatch.setattr(packing, "attend", lambda *a, **k: calls.append(1) or attend(*a, **k))
    packed, packed_grads = _loss_and_grads(lora_model, batch)
    assert len(calls) == lm.config.num_hidden_layers  # every layer attended packed

    monkeypatch.setattr(packing, "usable", lambda lm, batch: False)
    padded, padded_grads = _loss_and_grads(lora_model, batch)
    assert (packed.n_tokens, packed.n_correct) == (padded.n_tokens, padded.n_correct)
    torch.testing.assert_close(packed.loss_sum, padded.loss_sum, rtol=1e-5, atol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_packing_gives_each_row_its_own_positions_and_drops_nothing_trained(tokenizer):
    from tempering.train.batching import trained_end
    from tempering.train.packing import next_tokens, pack

    examples = _examples(tokenizer)
    batch = collate(examples, tokenizer.pad_token_id)
    prefix = batch["prefix_length"]
    input_ids, positions, own_rows, rows = pack(batch, "cpu")
    targets = next_tokens(batch, own_rows)
    # each row's tokens after the prefix up to its last trained one, less that one (it predicts nothing)
    own = [trained_end(e.labels) - 1 - prefix for e in examples]
    assert all(n < len(e) - 1 - prefix for n, e in zip(own, examples))  # the closing newline is cut
    assert input_ids.shape == (1, prefix + sum(own)) and rows.index.shape == (len(examples), max(own))
    assert positions[0, :prefix].tolist() == list(range(prefix))
    start = prefix
    for e, n in zip(examples, own):
        assert input_ids[0, start : start + n].tolist() == e.input_ids[prefix : prefix + n]
        assert positions[0, start : start + n].tolist() == list(range(prefix, prefix + n))
        assert targets[start - prefix : start - prefix + n].tolist() == e.labels[prefix + 1 : prefix + 1 + n]
        start += n
    assert int((targets != -100).sum()) == sum(sum(label != -100 for label in e.labels) for e in examples)


def test_packing_holds_inside_a_sliding_window_and_stops_outside_it_or_its_architectures(tokenizer, monkeypatch):
    from transformers import MistralConfig, MistralForCausalLM

    from tempering.train import attention, packing

    model = _lora(_tiny_phi3(tokenizer)).train()
    lm = model.get_base_model()
    attention.use_for_training(lm)
    batch = collate(_examples(tokenizer), tokenizer.pad_token_id)
    lm.config.sliding_window = batch["input_ids"].shape[1] - 1
    assert not packing.usable(lm, batch)
    lm.config.sliding_window = batch["input_ids"].shape[1]  # Phi-3-mini's own has 2047: every row inside it
    assert packing.usable(lm, batch)
    packed, packed_grads = _loss_and_grads(model, batch)
    monkeypatch.setattr(packing, "usable", lambda lm, batch: False)
    padded, padded_grads = _loss_and_grads(model, batch)
    torch.testing.assert_close(packed.loss_sum, padded.loss_sum, rtol=1e-5, atol=1e-5)
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)
    monkeypatch.undo()

    # an architecture outside the list (it may carry state from row to row) keeps the padded path
    other = MistralForCausalLM(MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2))
    assert attention.use_for_training(other) and not packing.usable(other, batch)
