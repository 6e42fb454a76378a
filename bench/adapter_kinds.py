"""What each customization of the job config costs and changes, on the embedded model and the bundled Xbox sample.

    python bench/adapter_kinds.py [--examples 48] [--valid 24] [--epochs 1] [--new-tokens 64] [--threads T]

For each job (adapter lora / dora / full with AdamW; lora with SGD and Adafactor; lora with label smoothing 0.1)
one fine-tune of the first ``--examples`` training rows, scored on the sample's validation file: training
seconds and tokens/s, validation loss, the model folder's size on disk. Then decode speed through the serving
engine (``serve.engine``: greedy, one stream, ``--new-tokens`` tokens, median of 3) for the base model, the
LoRA adapter (``serve.lora``'s path), the DoRA adapter (PEFT's own forward) and the fully fine-tuned model (an
engine of its own). Uses a fresh TEMPERING_HOME under /tmp unless one is set. Prints one table.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "smollm2-135m-instruct"
JOBS = [("lora", "adamw", 0.0), ("dora", "adamw", 0.0), ("full", "adamw", 0.0), ("lora", "sgd", 0.0),
        ("lora", "adafactor", 0.0), ("lora", "adamw", 0.1)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=48, help="training rows used (default 48)")
    p.add_argument("--valid", type=int, default=24, help="validation rows used (default: all 24)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    return p.parse_args(argv)


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def train(args, work: Path) -> list[dict]:
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    rows = (REPO / "examples/xbox-support/train.jsonl").read_text(encoding="utf-8").splitlines()[: args.examples]
    data = work / "train.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    valid = work / "valid.jsonl"
    valid.write_text("\n".join((REPO / "examples/xbox-support/validation.jsonl").read_text(encoding="utf-8")
                               .splitlines()[: args.valid]) + "\n", encoding="utf-8")
    results = []
    for adapter, optimizer, smoothing in JOBS:
        config = parse_config({
            "model": BASE, "training_file": data, "validation_file": valid,
            "seed": 1, "evaluate": False, "adapter": adapter, "optimizer": optimizer, "label_smoothing": smoothing,
            "hyperparameters": {"n_epochs": args.epochs, "batch_size": 8}})
        began = time.perf_counter()
        result = tune(config)
        seconds = time.perf_counter() - began
        results.append({"job": f"{adapter}/{optimizer}" + (f"/ls{smoothing}" if smoothing else ""),
                        "model": result.model_id, "adapter": adapter, "train_s": seconds,
                        "tok_s": result.trained_tokens / seconds, "valid_loss": result.valid_loss,
                        "base_loss": result.base_valid_loss, "lr": result.hyperparameters.learning_rate,
                        "model_mb": folder_mb(Path(result.output_dir)),
                        "checkpoint_mb": folder_mb(next((Path(result.run_dir) / "checkpoints").iterdir()))})
        print(f"trained {results[-1]['job']}: {seconds:.1f} s, valid loss {result.valid_loss:.4f}", flush=True)
    return results


async def _decode(engine, prompt: list[int], new_tokens: int, adapter) -> float:
    from tempering.serve.params import SamplingParams

    began = time.perf_counter()
    count = 0
    async for chunk in engine.generate(prompt, SamplingParams(max_tokens=new_tokens, temperature=0), adapter):
        count += chunk.tokens
    return count / (time.perf_counter() - began)


def decode_speed(args, jobs: list[dict]) -> dict[str, float]:
    from tempering.data.encode import encode_prompt
    from tempering.serve.registry import Serving
    from tempering.train import refs

    serving = Serving(threads=args.threads)
    speeds = {}
    messages = [{"role": "user", "content": "My controller keeps disconnecting. What should I try, step by step?"}]
    cases = [("base", None)] + [(j["adapter"], refs.resolve(j["model"])) for j in jobs if "/adamw" in j["job"]
                                and "/ls" not in j["job"]]
    for name, target in cases:
        full = target is not None and target.full
        engine = serving.engine(BASE, target.adapter if full else None)
        engine.wait_ready(600)
        engine.eos_ids = set()  # every answer the same length
        prompt = encode_prompt(engine.tokenizer, messages)
        adapter = target.adapter if target is not None and not full else None
        runs = [asyncio.run(_decode(engine, prompt, args.new_tokens, adapter)) for _ in range(4)][1:]  # 1 warm-up
        speeds[name] = statistics.median(runs)
        print(f"decode {name}: {speeds[name]:.1f} tokens/s", flush=True)
    asyncio.run(serving.aclose())
    return speeds


def main(argv=None) -> int:
    args = parse_args(argv)
    if "TEMPERING_HOME" not in os.environ:
        os.environ["TEMPERING_HOME"] = tempfile.mkdtemp(prefix="tempering-bench-")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="adapter-kinds-"))
    jobs = train(args, work)
    speeds = decode_speed(args, jobs)
    print(f"\n{args.examples} Xbox rows, {args.epochs} epoch(s), batch 8, seed 1, validation: {args.valid} of the sample's rows")
    print(f"{'job':<20}{'lr':>9}{'train s':>9}{'tok/s':>8}{'valid loss':>12}{'model MB':>10}{'ckpt MB':>9}")
    for j in jobs:
        print(f"{j['job']:<20}{j['lr']:>9.1e}{j['train_s']:>9.1f}{j['tok_s']:>8.0f}{j['valid_loss']:>12.4f}"
              f"{j['model_mb']:>10.1f}{j['checkpoint_mb']:>9.1f}")
    print(f"base model validation loss {jobs[0]['base_loss']:.4f}")
    print("decode tokens/s (engine, one stream, greedy, median of 3): "
          + ", ".join(f"{k} {v:.1f}" for k, v in speeds.items()))
    if "lora" in speeds and "dora" in speeds:
        print(f"DoRA / LoRA decode speed: {speeds['dora'] / speeds['lora']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
