"""Training throughput: Tempering's LoRA engine against TRL's SFTTrainer, on the same model, data and settings.

    python bench/train_throughput.py [--examples 256] [--epochs 1] [--only tempering|trl]

One process runs, in order:
  1. a measured float32 matmul peak of this machine (torch.mm, torch's default threads, best of several);
  2. TRL ``SFTTrainer`` (float32 forced, completion-only loss on a conversational prompt-completion dataset,
     peft LoRA, no gradient checkpointing, everything else TRL's default);
  3. ``tempering.train.tune`` with the same model, data, LoRA config, learning rate, batch size and epochs;
then prints tokens/s of each, the ratio, each final validation loss (both computed by the same function
over the same encoded validation examples) and Tempering's MFU. See bench/README.md.

Needs the ``bench`` extra (``pip install -e '.[bench]'``) for TRL. Set TEMPERING_HOME as for the CLI so the
embedded model is not converted again.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "banking77" / "train.csv"
SYSTEM_PROMPT = ("You are a banking assistant. Classify the customer's message into one of the bank's intents "
                 "and answer with the intent label only.")
N_VALID = 64
BATCH_SIZE = 8
LORA = {"rank": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=256, help="training examples (default 256)")
    p.add_argument("--epochs", type=int, default=1, help="epochs for both trainers (default 1)")
    p.add_argument("--only", choices=["tempering", "trl"], help="run only one of the two trainers")
    p.add_argument("--learning-rate", type=float, default=None,
                   help="learning rate for both (default: Tempering's base rate for the model family, i.e. "
                        "learning_rate_multiplier 1; TRL gets the same value explicitly)")
    p.add_argument("--seed", type=int, default=42, help="data shuffle and trainer seed (default 42)")
    p.add_argument("--data", type=Path, default=DATA, help=f"BANKING77 train.csv (default {DATA})")
    p.add_argument("--keep-run", action="store_true", help="keep Tempering's run folder under TEMPERING_HOME")
    p.add_argument("--warmup-ratio", type=float, default=None,
                   help="Tempering's warmup share of steps (default: the job config's default)")
    args = p.parse_args(argv)
    if args.examples < 10:
        p.error("--examples must be at least 10 (Tempering's minimum training set)")
    return args


# ---------------------------------------------------------------------------------------------- data

def load_rows(path: Path, n_train: int, seed: int) -> tuple[list[dict], list[dict]]:
    if not path.is_file():
        sys.exit(f"error: BANKING77 data not found at {path}\n"
                 "This benchmark expects the shared data checkout next to the repository "
                 "(../shared/data/banking77/train.csv with columns text,category), or pass --data PATH.")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("text") and r.get("category")]
    if len(rows) < n_train + N_VALID:
        sys.exit(f"error: {path} has {len(rows)} usable rows; need {n_train} + {N_VALID} validation rows")
    random.Random(seed).shuffle(rows)
    return rows[:n_train], rows[n_train : n_train + N_VALID]


def chat(row: dict) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["text"]},
            {"role": "assistant", "content": row["category"]}]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------- peak

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


# ---------------------------------------------------------------------------------------------- helpers

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


def validation_loss(model, valid_examples, tokenizer, max_length) -> dict:
    from tempering.train.batching import collate
    from tempering.train.loss import evaluate

    return evaluate(model, valid_examples, lambda batch: collate(batch, tokenizer.pad_token_id, max_length))


# ---------------------------------------------------------------------------------------------- TRL

def run_trl(args, card, lr, train_rows, valid_examples, tmp: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers.utils import logging as hf_logging
    from trl import SFTConfig, SFTTrainer

    import trl
    from tempering.catalog import load_causal_lm, load_tokenizer
    from tempering.data import encode_chat
    from tempering.hardware import select_placement

    hf_logging.set_verbosity_warning()
    records = [{"prompt": chat(r)[:2], "completion": chat(r)[2:]} for r in train_rows]
    write_jsonl(tmp / "trl_train.jsonl", records)
    dataset = Dataset.from_list(records)
    tokenizer = load_tokenizer(card)
    placement = select_placement("cpu")  # float32 on the CPU, as the TRL measurement
    model = load_causal_lm(card, placement)
    config = SFTConfig(
        output_dir=str(tmp / "trl-out"),
        bf16=False, fp16=False,  # precision forced to float32 (TRL's default is bf16)
        gradient_checkpointing=False,  # TRL's default is True
        completion_only_loss=True,  # the default for prompt-completion data, stated explicitly
        per_device_train_batch_size=BATCH_SIZE,
        gradient_accumulation_steps=1,
        num_train_epochs=args.epochs,
        learning_rate=lr,
        seed=args.seed,
        report_to="none",  # no experiment trackers (no network here); does not change the training
        use_cpu=placement.device.type == "cpu",
    )
    peft_config = LoraConfig(r=LORA["rank"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                             target_modules=LORA["target_modules"], bias="none", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)
    columns = trainer.train_dataset.column_names
    trl_ids = [list(ids) for ids in trainer.train_dataset["input_ids"]]
    per_epoch = sum(len(ids) for ids in trl_ids)
    tokens = per_epoch * args.epochs
    if "labels" in columns:
        trained = sum(sum(1 for x in labels if x != -100) for labels in trainer.train_dataset["labels"])
    elif "completion_mask" in columns:
        trained = sum(sum(mask) for mask in trainer.train_dataset["completion_mask"])
    else:
        trained = None
    ours = [encode_chat(tokenizer, chat(r)).input_ids for r in train_rows]
    same = sum(a == b for a, b in zip(trl_ids, ours)) if len(trl_ids) == len(ours) else 0
    print(f"[trl] token ids identical to Tempering's encode_chat for {same}/{len(ours)} examples; "
          f"tokens with loss: {trained} (TRL's completion includes the newline after <|im_end|>)")
    print(f"[trl {trl.__version__}] {len(records)} examples, {per_epoch} tokens/epoch after TRL's tokenization; "
          f"padding_free={config.padding_free}, packing={config.packing}, dtype "
          f"{next(trainer.model.parameters()).dtype}, threads {torch.get_num_threads()}", flush=True)
    began = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - began
    counted = getattr(trainer, "_total_train_tokens", None)
    valid = validation_loss(trainer.model, valid_examples, tokenizer, card.context_length)
    result = {"tokens": tokens, "seconds": seconds, "tokens_per_second": tokens / seconds,
              "train_loss": out.training_loss, "valid_loss": valid["loss"],
              "valid_accuracy": valid["mean_token_accuracy"], "trl_counted_tokens": counted,
              "steps": out.global_step}
    print(f"[trl] {out.global_step} steps in {seconds:.1f} s (train() wall time): "
          f"{result['tokens_per_second']:.1f} tokens/s, validation loss {valid['loss']:.4f}", flush=True)
    del trainer, model
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------- Tempering

class FitClock:
    """Times Tempering's fit stage from the recipe's events, with ``time.perf_counter`` on arrival.

    fit = from the "started" event to the last "epoch" event (includes the per-epoch validation and
    checkpoint the recipe does inside fit); steps = the sum of the intervals ending at each step
    ("metrics") event, each starting at the previous started/metrics/epoch event (excludes those).
    """

    def __init__(self):
        self.started = self.fit_end = self.last_mark = None
        self.steps_seconds, self.steps = 0.0, 0

    def __call__(self, event: dict) -> None:
        now, kind = time.perf_counter(), event.get("type")
        if kind == "started":
            self.started = self.last_mark = now
        elif kind == "metrics" and self.last_mark is not None:
            self.steps_seconds += now - self.last_mark
            self.steps += 1
            self.last_mark = self.fit_end = now
        elif kind == "epoch" and self.last_mark is not None:
            self.last_mark = self.fit_end = now

    @property
    def fit_seconds(self) -> float | None:
        return None if self.started is None or self.fit_end is None else self.fit_end - self.started


def run_tempering(args, card, lr, base_lr, train_rows, valid_rows, valid_examples, tmp: Path) -> dict:
    import torch
    from peft import PeftModel

    from tempering.catalog import load_causal_lm, load_tokenizer
    from tempering.data import encode_chat
    from tempering.train import TuneConfig, tune

    train_file = write_jsonl(tmp / "train.jsonl", [{"messages": chat(r)} for r in train_rows])
    valid_file = write_jsonl(tmp / "valid.jsonl", [{"messages": chat(r)} for r in valid_rows])
    tokenizer = load_tokenizer(card)
    encoded = [encode_chat(tokenizer, chat(r)) for r in train_rows]
    per_epoch = sum(len(e) for e in encoded)
    tokens = per_epoch * args.epochs
    config = TuneConfig(
        model=card.id, training_file=train_file, validation_file=valid_file, seed=args.seed,
        hyperparameters={"n_epochs": args.epochs, "batch_size": BATCH_SIZE,
                         "learning_rate_multiplier": lr / base_lr},
        lora=LORA, evaluate=False,  # the benchmark scores both models itself, identically
        **({} if args.warmup_ratio is None else {"warmup_ratio": args.warmup_ratio}),
    )
    print(f"[tempering] {len(train_rows)} examples, {per_epoch} tokens/epoch (tempering.data.encode_chat), "
          f"{sum(e.n_trained for e in encoded)} with loss, threads {torch.get_num_threads()}", flush=True)
    clock = FitClock()
    began = time.perf_counter()
    result = tune(config, on_event=clock)
    total = time.perf_counter() - began
    if result.hyperparameters.learning_rate != lr:
        print(f"warning: Tempering resolved learning rate {result.hyperparameters.learning_rate:g}, not {lr:g}")
    if clock.fit_seconds is not None:
        seconds, how = clock.fit_seconds, "fit stage: 'started' event to last 'epoch' event"
    else:
        seconds, how = total, "whole tune() call (the recipe emitted no started/epoch events)"
    # Reload the saved adapter and evaluate it exactly as the TRL model is evaluated.
    model = PeftModel.from_pretrained(load_causal_lm(card), result.output_dir)
    valid = validation_loss(model, valid_examples, tokenizer, card.context_length)
    out = {"tokens": tokens, "seconds": seconds, "timing": how, "tokens_per_second": tokens / seconds,
           "steps_seconds": clock.steps_seconds or None, "steps": clock.steps, "total_seconds": total,
           "train_loss": result.train_loss, "valid_loss": valid["loss"],
           "valid_accuracy": valid["mean_token_accuracy"], "recipe_valid_loss": result.valid_loss,
           "recipe_tokens": result.trained_tokens, "base_valid_loss": result.base_valid_loss,
           "learning_rate": result.hyperparameters.learning_rate}
    print(f"[tempering] {clock.steps} steps, fit {seconds:.1f} s ({how}); whole tune() {total:.1f} s: "
          f"{out['tokens_per_second']:.1f} tokens/s, validation loss {valid['loss']:.4f}", flush=True)
    if not args.keep_run:
        shutil.rmtree(result.run_dir, ignore_errors=True)
    else:
        print(f"[tempering] run folder kept: {result.run_dir}")
    del model
    gc.collect()
    return out


# ---------------------------------------------------------------------------------------------- main

def main(argv=None) -> int:
    args = parse_args(argv)
    train_rows, valid_rows = load_rows(args.data, args.examples, args.seed)

    import platform

    import torch

    from tempering.catalog import DEFAULT_MODEL_ID, get_card, load_causal_lm, load_tokenizer
    from tempering.data import encode_chat
    from tempering.train.config import BASE_LEARNING_RATE, DEFAULT_BASE_LEARNING_RATE

    card = get_card(DEFAULT_MODEL_ID)
    base_lr = BASE_LEARNING_RATE.get(card.family, DEFAULT_BASE_LEARNING_RATE)
    lr = args.learning_rate if args.learning_rate is not None else base_lr
    if not 0 < lr / base_lr <= 10:
        sys.exit(f"error: --learning-rate {lr:g} is outside Tempering's range (0, 10 x {base_lr:g}]")
    if torch.cuda.is_available():
        print("note: a CUDA GPU is visible; TRL runs float32 on the CPU here and the peak is a CPU peak, "
              "while Tempering picks its own device: the comparison is meant for CPU-only machines.")

    tokenizer = load_tokenizer(card)
    base = load_causal_lm(card)
    n_all, n_nonembed = param_counts(base)
    del base
    gc.collect()
    valid_examples = [encode_chat(tokenizer, chat(r)) for r in valid_rows]

    print(f"model {card.id}: {n_all / 1e6:.1f} M parameters, {n_nonembed / 1e6:.1f} M non-embedding; "
          f"{len(train_rows)} training + {len(valid_rows)} validation examples, {args.epochs} epoch(s), "
          f"batch {BATCH_SIZE}, learning rate {lr:g}, LoRA r={LORA['rank']} alpha={LORA['alpha']} "
          f"dropout={LORA['dropout']} {LORA['target_modules']}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}", flush=True)

    load_before = os.getloadavg()
    peak = matmul_peak()
    print(f"float32 matmul peak: {peak:.1f} GFLOP/s (torch.mm, best of several); "
          f"load average {load_before[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    results = {}
    with tempfile.TemporaryDirectory(prefix="tempering-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if args.only in (None, "trl"):
            results["trl"] = run_trl(args, card, lr, train_rows, valid_examples, tmp)
        if args.only in (None, "tempering"):
            results["tempering"] = run_tempering(args, card, lr, base_lr, train_rows, valid_rows,
                                                 valid_examples, tmp)

    peak_after = matmul_peak()
    load_after = os.getloadavg()
    print(f"float32 matmul peak again after training: {peak_after:.1f} GFLOP/s; load average over the last "
          f"1/5/15 min {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} on {os.cpu_count()} CPUs "
          "(above the CPU count means other processes competed with this run: numbers are noisy)", flush=True)
    peak = max(peak, peak_after)  # the higher one: a conservative MFU

    def mfu(tps: float, n: int) -> float:
        return 4 * n * tps / (peak * 1e9)

    print()
    print(f"{'':<11}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'valid loss':>12}{'valid acc':>11}"
          f"{'MFU (N non-emb)':>17}{'MFU (N all)':>13}")
    for name, r in results.items():
        print(f"{name:<11}{r['tokens']:>8}{r['seconds']:>9.1f}{r['tokens_per_second']:>10.1f}"
              f"{r['valid_loss']:>12.4f}{r['valid_accuracy']:>11.3f}"
              f"{mfu(r['tokens_per_second'], n_nonembed):>16.1%}{mfu(r['tokens_per_second'], n_all):>13.1%}")
    if len(results) == 2:
        ratio = results["tempering"]["tokens_per_second"] / results["trl"]["tokens_per_second"]
        print(f"\nratio Tempering/TRL tokens/s: {ratio:.2f}x; validation loss Tempering "
              f"{results['tempering']['valid_loss']:.4f} vs TRL {results['trl']['valid_loss']:.4f}")
    if "tempering" in results:
        t = results["tempering"]
        print(f"Tempering MFU: {mfu(t['tokens_per_second'], n_nonembed):.1%} with N = {n_nonembed / 1e6:.1f} M "
              f"non-embedding parameters (the main choice), {mfu(t['tokens_per_second'], n_all):.1%} with "
              f"N = {n_all / 1e6:.1f} M (all parameters)")
        if t["steps_seconds"]:
            print(f"  (steps only, without the per-epoch validation/checkpoint inside fit: "
                  f"{t['tokens'] / t['steps_seconds']:.1f} tokens/s)")
    print(f"""
Notes:
- tokens = non-pad tokens of the tokenized training set x epochs (each trainer's own tokenization: TRL's
  prompt-completion rendering, Tempering's encode_chat); tokens/s = tokens / wall seconds of training.
  TRL: trainer.train() wall time. Tempering: {results.get('tempering', {}).get('timing', 'n/a')}.
- validation loss = mean cross-entropy over the assistant tokens of the same {len(valid_rows)} encoded
  validation examples, by tempering.train.loss.evaluate for both fine-tuned models
  (Tempering's adapter is reloaded from its saved folder).
- MFU = 4 * N * tokens/s / peak: LoRA computes the frozen weights' forward (2N) and input gradients (2N)
  but not their weight gradients; peak = the higher of the two float32 matmul measurements
  ({peak:.1f} GFLOP/s).
- Both trainers keep their own defaults otherwise (TRL: linear decay, no warmup; Tempering: cosine with
  10% warmup; both AdamW, grad-norm clip 1.0, no weight decay).""")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
