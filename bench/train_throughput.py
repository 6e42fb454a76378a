"""Training throughput: Tempering's LoRA engine against TRL's SFTTrainer, on the same model, data and settings.

    python bench/train_throughput.py [--datasets banking77,xbox,control] [--examples 64] [--seeds 1]
    python bench/train_throughput.py --profile            # a torch.profiler summary of Tempering's step

One process runs, per data set and seed, the trainers of ``--trainers``:
  tempering           ``tempering.train.tune`` (shared prompt prefixes computed once per batch);
  tempering-unshared  the same with prefix sharing switched off (the control's reference);
  trl                 TRL ``SFTTrainer``, float32 forced, no gradient checkpointing, completion-only loss on
                      prompt-completion data, peft LoRA, everything else TRL's default;
  trl-defaults        the same with TRL's own defaults (gradient checkpointing on), float32 still forced;
then prints, per data set, tokens/s (mean ± spread over seeds), ratios, validation loss (mean ± spread, every
model scored by the same function on the same encoded validation examples), dataset MFU (4·N·dataset
tokens/s ÷ peak), Tempering's hardware MFU (FLOPs actually executed ÷ peak, and ÷ a matmul at the model's own
shapes) and the prompt-prefix tokens skipped. See bench/README.md.

Needs the ``bench`` extra for TRL. Set TEMPERING_HOME as for the CLI so the embedded model is not converted again.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
BANKING77 = SHARED / "banking77" / "train.csv"
TRUTHFULQA = SHARED / "phi3-cookbook" / "truthfulqa_text_train.jsonl"
XBOX = REPO / "examples" / "xbox-support"
SYSTEM_PROMPT = ("You are a banking assistant. Classify the customer's message into one of the bank's intents "
                 "and answer with the intent label only.")
# Words for the control's system messages: every row gets its own random six, so rows share only the template.
WORDS = ("amber", "basalt", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
         "kestrel", "lagoon", "meadow", "nectar", "onyx", "prairie", "quartz", "raven", "saffron", "tundra",
         "umber", "violet", "willow", "xenon", "yarrow", "zephyr", "copper", "falcon", "glacier", "heron",
         "iris", "jasper", "lotus", "marble", "nimbus", "orchid", "pebble", "quill", "river", "summit",
         "thistle")
BATCH_SIZE = 8
LORA = {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
TRAINERS = ("tempering", "tempering-unshared", "trl", "trl-defaults")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="banking77,xbox,control",
                   help="comma-separated, of banking77, xbox, control (default: all three)")
    p.add_argument("--trainers", default=",".join(TRAINERS), help=f"comma-separated, of {', '.join(TRAINERS)}")
    p.add_argument("--examples", type=int, default=64, help="training examples per data set (default 64; "
                   "the Xbox set has 92 single-turn rows)")
    p.add_argument("--valid", type=int, default=32, help="validation examples per data set (default 32)")
    p.add_argument("--seeds", type=int, default=1, help="trainer seeds per data set: 42, 43, … (default 1)")
    p.add_argument("--epochs", type=int, default=1, help="epochs for every trainer (default 1)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="learning rate for all (default: Tempering's base rate for the model family)")
    p.add_argument("--data-seed", type=int, default=42, help="which rows are drawn (default 42)")
    p.add_argument("--profile", action="store_true",
                   help="profile a few of Tempering's steps on the first data set with torch.profiler and exit")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every trainer and the peaks (default: torch's default, one per core); "
                        "on a machine shared with other work, 1 avoids OpenMP threads spin-waiting on busy cores")
    p.add_argument("--keep-run", action="store_true", help="keep Tempering's run folders under TEMPERING_HOME")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.trainers = [t.strip() for t in args.trainers.split(",") if t.strip()]
    bad = [d for d in args.datasets if d not in ("banking77", "xbox", "control")]
    bad += [t for t in args.trainers if t not in TRAINERS]
    if bad:
        p.error(f"unknown data set or trainer: {', '.join(bad)}")
    if args.examples < 10:
        p.error("--examples must be at least 10 (Tempering's minimum training set)")
    return args


# ---------------------------------------------------------------------------------------------- data

def _need(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"error: {path} not found; this benchmark expects the shared data checkout next to the "
                 "repository (../shared/data) and the bundled examples/xbox-support")
    return path


def _banking77(n: int, n_valid: int, seed: int):
    with _need(BANKING77).open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("text") and r.get("category")]
    random.Random(seed).shuffle(rows)  # noqa: S311 - a reproducible sample
    chats = [[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": r["text"]},
              {"role": "assistant", "content": r["category"]}] for r in rows[: n + n_valid]]
    return chats[:n], chats[n:]


def _xbox(n: int, n_valid: int, seed: int):
    def read(name):
        rows = [json.loads(line)["messages"] for line in _need(XBOX / name).open(encoding="utf-8")]
        # single-turn rows only: TRL's prompt-completion form trains only the last answer of a multi-turn row
        return [r for r in rows if [m["role"] for m in r] == ["system", "user", "assistant"]]

    train, valid = read("train.jsonl"), read("validation.jsonl")
    random.Random(seed).shuffle(train)  # noqa: S311 - a reproducible sample
    return train[:n], valid[:n_valid]


def _control(n: int, n_valid: int, seed: int):
    pattern = re.compile(r"<\|user\|>\s*(.*?)\s*<\|end\|>\s*<\|assistant\|>\s*(.*?)\s*<\|end\|>", re.DOTALL)
    pairs = [m.groups() for line in _need(TRUTHFULQA).open(encoding="utf-8")
             if (m := pattern.search(json.loads(line)["text"]))]
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample
    rng.shuffle(pairs)
    # a distinct system message per row (SmolLM2's template would insert one shared default system prompt)
    chats = [[{"role": "system", "content": _system_message(rng, used)},
              {"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for used in [set()] for q, a in pairs[: n + n_valid]]
    return chats[:n], chats[n:]


def _system_message(rng: random.Random, used: set) -> str:
    """Six random words whose first two no other row starts with: rows then share at most the template header
    and one word, under the 8-token minimum (two rows that began "Glacier xenon …" were grouped and shared)."""
    while True:
        words = rng.sample(WORDS, 6)
        if tuple(words[:2]) not in used:
            used.add(tuple(words[:2]))
            return " ".join(words).capitalize() + "."


LOADERS = {"banking77": _banking77, "xbox": _xbox, "control": _control}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- peaks and FLOPs

def matmul_peak(sizes=(1024, 2048, 3072), repeats: int = 4) -> float:
    """Best float32 ``torch.mm`` rate in GFLOP/s over a few square sizes, torch's default thread count."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm-up
        for _ in range(repeats):
            began = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - began) / 1e9)
    return best


def shape_peak(config, rows: int, repeats: int = 5) -> float:
    """GFLOP/s of one decoder layer's projections (forward shapes) on ``rows`` tokens: what a matmul at the
    model's own sizes reaches on this machine, best of ``repeats``."""
    import torch
    import torch.nn.functional as F

    h, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    shapes = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]
    weights = [torch.randn(o, k) for o, k in shapes]
    inputs = {k: torch.randn(rows, k) for _, k in shapes}
    flops = sum(2 * rows * o * k for o, k in shapes)
    best = 0.0
    for _ in range(repeats + 1):
        began = time.perf_counter()
        for w in weights:
            F.linear(inputs[w.shape[1]], w)
        best = max(best, flops / (time.perf_counter() - began) / 1e9)
    return best


def param_counts(model) -> tuple[int, int]:
    """(all parameters, non-embedding parameters) of a causal LM; tied input/output embeddings count once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embed = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight.numel()}
    out = model.get_output_embeddings()
    if out is not None:
        embed[id(out.weight)] = out.weight.numel()
    return total, total - sum(embed.values())


@contextlib.contextmanager
def prefix_sharing(enabled: bool):
    """Switch Tempering's prefix sharing off by raising the minimum shared length out of reach."""
    from tempering.train import batching

    saved = batching.MIN_SHARED_PREFIX
    if not enabled:
        batching.MIN_SHARED_PREFIX = 10**9
    try:
        yield
    finally:
        batching.MIN_SHARED_PREFIX = saved


def job_batches(encoded, seed: int, epochs: int, max_length: int):
    """The batches Tempering trains, in its order (train file order = ``encoded``; see train.fit)."""
    from tempering.train.batching import epoch_batches, shareable_length

    lengths = [len(e) for e in encoded]
    prompts = [tuple(e.input_ids[: shareable_length(e, max_length)]) for e in encoded]
    return [[encoded[i] for i in b] for epoch in range(1, epochs + 1)
            for b in epoch_batches(lengths, BATCH_SIZE, seed, epoch, prompts)]


def executed_flops(model, batches, pad_id: int, max_length: int, sample: int = 3) -> float:
    """FLOPs Tempering executes for ``batches``: torch's FlopCounterMode over the forward and backward of the
    first ``sample`` batches gives FLOPs per computed token position (the prefix once, then each row's own tokens
    on the packed path, or every row padded to the widest on the two-pass one), scaled by every batch's."""
    from torch.utils.flop_counter import FlopCounterMode

    from tempering.train import packing
    from tempering.train.batching import collate
    from tempering.train.loss import causal_lm, sparse_lm_loss

    def slots(batch):  # token positions the decoder runs: the packed sequence's, else the padded rows'
        if packing.usable(causal_lm(model), batch):
            return packing.pack(batch, "cpu")[0].shape[1]
        rows, width = batch["input_ids"].shape
        return batch["prefix_length"] + rows * (width - 1 - batch["prefix_length"])

    collated = [collate(b, pad_id, max_length) for b in batches]
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        for batch in collated[:sample]:
            sparse_lm_loss(model, batch).mean.backward()
    model.zero_grad(set_to_none=True)
    per_slot = counter.get_total_flops() / sum(slots(b) for b in collated[:sample])
    return per_slot * sum(slots(b) for b in collated)


# ---------------------------------------------------------------------------------------------- trainers

def validation_loss(model, valid_examples, tokenizer, max_length) -> dict:
    from tempering.train.batching import collate
    from tempering.train.loss import evaluate

    return evaluate(model, valid_examples, lambda batch: collate(batch, tokenizer.pad_token_id, max_length))


def run_trl(ctx, seed: int, defaults: bool, tmp: Path) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    from tempering.catalog import load_causal_lm
    from tempering.hardware import select_placement

    hf_logging.set_verbosity_error()
    records = [{"prompt": c[:-1], "completion": c[-1:]} for c in ctx["train"]]
    placement = select_placement("cpu")  # float32 on the CPU
    model = load_causal_lm(ctx["card"], placement)
    tuned = {} if defaults else {"gradient_checkpointing": False, "completion_only_loss": True}
    config = SFTConfig(output_dir=str(tmp / "trl-out"), bf16=False, fp16=False,  # float32 forced (default bf16)
                       per_device_train_batch_size=BATCH_SIZE, num_train_epochs=ctx["epochs"],
                       learning_rate=ctx["lr"], seed=seed, report_to="none",
                       use_cpu=True, **tuned)
    peft_config = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(records),
                         processing_class=ctx["tokenizer"], peft_config=peft_config)
    trl_ids = [list(ids) for ids in trainer.train_dataset["input_ids"]]
    same = sum(a == b.input_ids for a, b in zip(trl_ids, ctx["encoded"]))
    tokens = sum(len(ids) for ids in trl_ids) * ctx["epochs"]
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    valid = validation_loss(trainer.model, ctx["valid_encoded"], ctx["tokenizer"], ctx["max_length"])
    del trainer, model
    gc.collect()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "valid_loss": valid["loss"], "note": f"ids same as encode_chat: {same}/{len(trl_ids)}; "
            f"gradient checkpointing {config.gradient_checkpointing}"}


class FitClock:
    """Times Tempering's fit stage from the recipe's events: from "started" to the last "epoch" event (with
    the per-epoch validation inside fit), and the steps alone (the intervals ending at "metrics" events)."""

    def __init__(self):
        self.started = self.fit_end = self.last_mark = None
        self.steps_seconds = 0.0
        self.sharing = None

    def __call__(self, event: dict) -> None:
        now, kind = time.perf_counter(), event.get("type")
        if kind == "prefix_sharing":
            self.sharing = event["data"]
        elif kind == "started":
            self.started = self.last_mark = now
        elif kind == "metrics" and self.last_mark is not None:
            self.steps_seconds += now - self.last_mark
            self.last_mark = self.fit_end = now
        elif kind == "epoch" and self.last_mark is not None:
            self.last_mark = self.fit_end = now


def run_tempering(ctx, seed: int, share: bool, tmp: Path) -> dict:
    from peft import PeftModel
    from torch.utils.flop_counter import FlopCounterMode

    from tempering.catalog import load_causal_lm
    from tempering.train import TuneConfig, attention, tune

    train_file = write_jsonl(tmp / "train.jsonl", [{"messages": c} for c in ctx["train"]])
    # a small in-fit validation set: the benchmark scores every model itself afterwards, identically
    valid_file = write_jsonl(tmp / "valid.jsonl", [{"messages": c} for c in ctx["valid"][:8]])
    tokens = sum(len(e) for e in ctx["encoded"]) * ctx["epochs"]
    config = TuneConfig(model=ctx["card"].id, training_file=train_file, validation_file=valid_file, seed=seed,
                        hyperparameters={"n_epochs": ctx["epochs"], "batch_size": BATCH_SIZE,
                                         "learning_rate_multiplier": ctx["lr"] / ctx["base_lr"]},
                        lora=LORA, evaluate=False)
    clock = FitClock()
    with prefix_sharing(share):
        result = tune(config, on_event=clock)
        base = load_causal_lm(ctx["card"])
        attention.use_for_training(base)  # as the job trained it: its executed FLOPs are counted on its path
        model = PeftModel.from_pretrained(base, result.output_dir, is_trainable=True)
        valid = validation_loss(model, ctx["valid_encoded"], ctx["tokenizer"], ctx["max_length"])
        batches = job_batches(ctx["encoded"], seed, ctx["epochs"], ctx["max_length"])
        step_flops = executed_flops(model, batches, ctx["tokenizer"].pad_token_id, ctx["max_length"])
        # the fit stage's time includes each epoch's validation on the 8 examples: so do its FLOPs
        with FlopCounterMode(display=False) as counter:
            validation_loss(model, ctx["valid_encoded"][:8], ctx["tokenizer"], ctx["max_length"])
        flops = step_flops + ctx["epochs"] * counter.get_total_flops()
    seconds = clock.fit_end - clock.started
    if not ctx["keep_run"]:
        shutil.rmtree(result.run_dir, ignore_errors=True)
    del model
    gc.collect()
    return {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
            "steps_tokens_per_second": tokens / clock.steps_seconds, "valid_loss": valid["loss"],
            "flops": flops, "step_flops": step_flops, "steps_seconds": clock.steps_seconds,
            "sharing": clock.sharing, "note": ""}


# ---------------------------------------------------------------------------------------------- report

def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {(max(values) - min(values)) / 2:.4f}"


def report(name: str, ctx: dict, runs: dict, peak: float, n_nonembed: int) -> dict:
    """Print one data set's table; return the headline numbers."""
    print(f"\n== {name}: {len(ctx['train'])} training / {len(ctx['valid'])} validation examples, "
          f"{ctx['tokens_per_epoch']} tokens per epoch, {len(ctx['seeds'])} seed(s) {ctx['seeds']}")
    print(f"{'trainer':<20}{'tokens/s':>10}{'± spread':>10}{'valid loss (mean ± half-range)':>32}"
          f"{'dataset MFU':>13}{'hw MFU':>9}{'hw/shape':>10}")
    out = {}
    for trainer, results in runs.items():
        tps = [r["tokens_per_second"] for r in results]
        mean = statistics.mean(tps)
        hw, hw_shape = "", ""
        if results[0].get("flops"):
            rate = statistics.mean(r["flops"] / r["seconds"] for r in results) / 1e9
            hw, hw_shape = f"{rate / peak:.1%}", f"{rate / ctx['shape_peak']:.1%}"
            out[f"{trainer}_hw_mfu"] = rate / peak
        print(f"{trainer:<20}{mean:>10.1f}{(max(tps) - min(tps)) / 2:>10.1f}"
              f"{_spread([r['valid_loss'] for r in results]):>32}{4 * n_nonembed * mean / (peak * 1e9):>13.1%}"
              f"{hw:>9}{hw_shape:>10}")
        out[trainer] = mean
        out[f"{trainer}_valid"] = [r["valid_loss"] for r in results]
    for trainer, results in runs.items():
        notes = {r["note"] for r in results if r["note"]}
        if trainer.startswith("tempering"):
            r = results[0]
            s = r["sharing"] or {}
            steps_mfu = statistics.mean(x["step_flops"] / x["steps_seconds"] for x in results) / 1e9 / peak
            notes.add(f"steps only {statistics.mean(x['steps_tokens_per_second'] for x in results):.1f} tokens/s, "
                      f"hw MFU {steps_mfu:.1%}; "
                      f"prefix tokens skipped {s.get('prefix_tokens_skipped')} of {s.get('tokens')} "
                      f"({s.get('skipped_fraction', 0):.1%}), computed once {s.get('prefix_tokens_computed')}")
        for note in sorted(notes):
            print(f"  {trainer}: {note}")
    for a, b in (("tempering", "trl"), ("tempering", "trl-defaults"), ("tempering", "tempering-unshared")):
        if a in out and b in out:
            out[f"{a}/{b}"] = out[a] / out[b]
            print(f"  ratio {a} / {b}: {out[a] / out[b]:.2f}x")
    return out


def targets(summary: dict) -> None:
    print("\nTargets:")
    checks = [("banking77", "tempering/trl", 2.5), ("banking77", "tempering/trl-defaults", 3.0),
              ("xbox", "tempering/trl", 2.0)]
    for dataset, key, goal in checks:
        if key in summary.get(dataset, {}):
            value = summary[dataset][key]
            print(f"  {dataset} {key} >= {goal}x: {value:.2f}x — {'met' if value >= goal else 'not met'}")
    control = summary.get("control", {})
    if "tempering/tempering-unshared" in control:
        value = control["tempering/tempering-unshared"]
        print(f"  control within 5% of the unshared path: {value:.3f}x — "
              f"{'met' if abs(value - 1) <= 0.05 else 'not met'}")
    for dataset, numbers in summary.items():
        if "tempering_hw_mfu" in numbers:
            value = numbers["tempering_hw_mfu"]
            print(f"  {dataset} hardware MFU >= 65%: {value:.1%} — {'met' if value >= 0.65 else 'not met'}")
        if "tempering_valid" in numbers and "trl_valid" in numbers:
            ours, theirs = numbers["tempering_valid"], numbers["trl_valid"]
            spread = max(max(ours) - min(ours), max(theirs) - min(theirs))
            gap = statistics.mean(ours) - statistics.mean(theirs)
            if len(ours) < 2:
                verdict = "one seed: no spread to judge by (--seeds 3)"
            else:
                verdict = "better" if gap < 0 else ("within seed spread" if gap <= spread else "worse")
            print(f"  {dataset} valid loss Tempering - TRL: {gap:+.4f} (seed spread {spread:.4f}): {verdict}")


# ---------------------------------------------------------------------------------------------- main

def build_context(name: str, args, card, tokenizer, lr: float, base_lr: float) -> dict:
    from tempering.data import encode_chat

    train, valid = LOADERS[name](args.examples, args.valid, args.data_seed)
    encoded = [encode_chat(tokenizer, c) for c in train]
    ctx = {"train": train, "valid": valid, "encoded": encoded, "card": card, "tokenizer": tokenizer,
           "valid_encoded": [encode_chat(tokenizer, c) for c in valid], "max_length": card.context_length,
           "epochs": args.epochs, "lr": lr, "base_lr": base_lr, "keep_run": args.keep_run,
           "tokens_per_epoch": sum(len(e) for e in encoded), "seeds": [42 + k for k in range(args.seeds)]}
    return ctx


def profile(ctx, steps: int = 4) -> None:
    """torch.profiler over ``steps`` of Tempering's training steps (after one warm-up), top operators."""
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from tempering.catalog import load_causal_lm
    from tempering.train import attention, fastlora
    from tempering.train.batching import collate
    from tempering.train.loss import sparse_lm_loss

    base = load_causal_lm(ctx["card"])
    attention.use_for_training(base)  # the job's own path: packed batches, LoRA's training forward
    model = get_peft_model(base, LoraConfig(
        r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear",
        task_type="CAUSAL_LM")).train()
    fastlora.patch(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [collate(b, ctx["tokenizer"].pad_token_id) for b in job_batches(ctx["encoded"], 42, 1, None)]

    def step(batch):
        result = sparse_lm_loss(model, batch)
        result.mean.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(batches[0])
    began = time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[1 : steps + 1]:
            step(batch)
    seconds = time.perf_counter() - began
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1 : steps + 1])
    print(f"profiled {steps} steps, {tokens} tokens, {seconds:.2f} s under the profiler "
          f"(prefix lengths {[b['prefix_length'] for b in batches[1 : steps + 1]]})")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))


def main(argv=None) -> int:
    args = parse_args(argv)

    import platform

    import torch

    from tempering.catalog import DEFAULT_MODEL_ID, get_card, load_causal_lm, load_tokenizer
    from tempering.train.config import BASE_LEARNING_RATE, DEFAULT_BASE_LEARNING_RATE

    if args.threads:
        torch.set_num_threads(args.threads)
    card = get_card(DEFAULT_MODEL_ID)
    base_lr = BASE_LEARNING_RATE.get(card.family, DEFAULT_BASE_LEARNING_RATE)
    lr = args.learning_rate if args.learning_rate is not None else base_lr
    if not 0 < lr / base_lr <= 10:
        sys.exit(f"error: --learning-rate {lr:g} is outside Tempering's range (0, 10 x {base_lr:g}]")
    if torch.cuda.is_available():
        print("note: a CUDA GPU is visible; TRL runs float32 on the CPU here while Tempering picks its own "
              "device: this comparison is meant for CPU-only machines (see bench/README.md for GPUs).")
    tokenizer = load_tokenizer(card)
    base = load_causal_lm(card)
    n_all, n_nonembed = param_counts(base)
    model_config = base.config
    del base
    gc.collect()
    contexts = {name: build_context(name, args, card, tokenizer, lr, base_lr) for name in args.datasets}
    if args.profile:
        profile(contexts[args.datasets[0]])
        return 0

    print(f"model {card.id}: {n_all / 1e6:.1f} M parameters, {n_nonembed / 1e6:.1f} M non-embedding; batch "
          f"{BATCH_SIZE}, learning rate {lr:g}, {args.epochs} epoch(s), LoRA r={LORA['rank']} alpha={LORA['alpha']} "
          f"dropout={LORA['dropout']} {LORA['target_modules']}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}", flush=True)
    load_before = os.getloadavg()
    peak = matmul_peak()
    for ctx in contexts.values():
        rows = statistics.mean(len(b) * max(len(e) for e in b) for b in job_batches(ctx["encoded"], 42, 1, None))
        ctx["shape_rows"] = int(rows)
        ctx["shape_peak"] = shape_peak(model_config, int(rows))
    print(f"float32 matmul peak {peak:.1f} GFLOP/s (square torch.mm); at the model's shapes "
          + ", ".join(f"{n} {c['shape_peak']:.1f}" for n, c in contexts.items())
          + f" GFLOP/s; load average {load_before[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    # One untimed short run first: the first training in a process pays one-time costs (kernel selection,
    # allocator growth) that would otherwise land on whichever trainer happens to run first.
    first = contexts[args.datasets[0]]
    with tempfile.TemporaryDirectory(prefix="tempering-bench-") as tmpdir:
        run_tempering({**first, "train": first["train"][:10], "encoded": first["encoded"][:10],
                       "valid": first["valid"][:8], "valid_encoded": first["valid_encoded"][:8]}, 0, True,
                      Path(tmpdir))
    all_runs = {}
    for name, ctx in contexts.items():
        runs: dict[str, list] = {t: [] for t in args.trainers}
        for seed in ctx["seeds"]:
            for trainer in args.trainers:
                with tempfile.TemporaryDirectory(prefix="tempering-bench-") as tmpdir:
                    if trainer.startswith("trl"):
                        result = run_trl(ctx, seed, trainer == "trl-defaults", Path(tmpdir))
                    else:
                        result = run_tempering(ctx, seed, trainer == "tempering", Path(tmpdir))
                runs[trainer].append(result)
                print(f"[{name} seed {seed}] {trainer}: {result['tokens_per_second']:.1f} tokens/s, "
                      f"valid loss {result['valid_loss']:.4f}; load {os.getloadavg()[0]:.2f}", flush=True)
        all_runs[name] = runs

    peak_after = matmul_peak()
    load_after = os.getloadavg()
    print(f"\nfloat32 matmul peak again after training: {peak_after:.1f} GFLOP/s; MFUs below use the higher of "
          f"the two, {max(peak, peak_after):.1f}; load average over the last 1/5/15 min {load_after[0]:.2f}/"
          f"{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} CPUs (above the CPU count: other "
          "processes competed and every timing, the peaks too, is noisy)")
    peak = max(peak, peak_after)  # the higher one: a conservative MFU
    for ctx in contexts.values():
        ctx["shape_peak"] = max(ctx["shape_peak"], shape_peak(model_config, ctx["shape_rows"]))
    summary = {name: report(name, contexts[name], runs, peak, n_nonembed) for name, runs in all_runs.items()}
    targets(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
