"""BANKING77 with 10 examples per intent: fine-tune the embedded default as a classifier and/or as chat.

Takes 10 training examples per intent (770) and a disjoint stratified validation set (5 per intent, 385)
from ../shared/data/banking77/train.csv (CC BY-NC 4.0: used here, never shipped), fine-tunes, and prints
validation accuracy, macro-F1 and training time; the job's evaluation.json holds base vs fine-tuned
(for chat: greedy answers mapped onto the intent labels). Reference (Casanueva et al. 2020): ~85 % accuracy with
10 examples per intent, ~93 % with all data.

    python bench/banking77.py [--task classification|chat] [--epochs N] [--per-intent 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "banking77" / "train.csv"
SYSTEM = "Classify the customer's banking message. Answer with the intent label only."


def pick(per_intent: int, valid_per_intent: int, seed: int):
    by_label = defaultdict(list)
    with DATA.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row.get("text") and row.get("category"):  # a few lines of the file are damaged
                by_label[row["category"]].append(row["text"])
    rng = random.Random(seed)
    train, valid = [], []
    for label in sorted(by_label):
        texts = sorted(set(by_label[label]))
        rng.shuffle(texts)
        train += [(t, label) for t in texts[:per_intent]]
        valid += [(t, label) for t in texts[per_intent : per_intent + valid_per_intent]]
    return train, valid


def write(rows, path: Path, task: str) -> Path:
    if task == "classification":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "category"])
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps({"messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": t},
            {"role": "assistant", "content": label}]}) + "\n" for t, label in rows), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["classification", "chat"], default="classification")
    parser.add_argument("--per-intent", type=int, default=10)
    parser.add_argument("--valid-per-intent", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate-multiplier", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-max-examples", type=int, default=385,
                        help="Validation examples the automatic evaluation answers (base and fine-tuned).")
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} not found: this benchmark needs the shared BANKING77 data")

    from tempering.cli.common import quiet_libraries
    from tempering.train import TuneConfig, tune

    quiet_libraries()
    train, valid = pick(args.per_intent, args.valid_per_intent, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="banking77-"))
    suffix = "csv" if args.task == "classification" else "jsonl"
    config = TuneConfig(
        task=args.task, training_file=write(train, folder / f"train.{suffix}", args.task),
        validation_file=write(valid, folder / f"valid.{suffix}", args.task), seed=args.seed, suffix="banking77",
        eval_max_examples=args.eval_max_examples,
        hyperparameters={"n_epochs": args.epochs, "batch_size": args.batch_size,
                         "learning_rate_multiplier": args.learning_rate_multiplier})
    started = time.perf_counter()
    result = tune(config, on_event=lambda e: print(e["message"], flush=True) if e["type"] != "metrics" else None)
    seconds = time.perf_counter() - started
    print(json.dumps({"task": args.task, "train_examples": len(train), "valid_examples": len(valid),
                      "model_id": result.model_id, "seconds": round(seconds, 1),
                      "valid_loss": result.valid_loss, "base_valid_loss": result.base_valid_loss,
                      "accuracy": (result.classification or {}).get("accuracy"),
                      "macro_f1": (result.classification or {}).get("macro_f1"),
                      "evaluation": f"{result.run_dir}/evaluation.json", "verdict": result.evaluation}, indent=2))


if __name__ == "__main__":
    main()
