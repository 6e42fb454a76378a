"""What int8 and int4 serving weights cost in quality: the fine-tuned embedded model served three ways.

    python bench/quantization.py [--xbox-epochs 2] [--tqa-examples 128] [--tqa-epochs 1] [--new-tokens 64]
                                 [--xbox-model ID] [--tqa-model ID] [--threads 2]

Fine-tunes the embedded default (SmolLM2-135M-Instruct, LoRA, the job defaults otherwise) on the bundled Xbox
sample and on the Phi-3 Cookbook's TruthfulQA set (``../shared/data``; skipped when absent), unless ``--xbox-model``
/ ``--tqa-model`` name models already trained in this TEMPERING_HOME. Each model is then loaded as a deployment
serves it: the base model's linear layers as float32, int8 (per channel) or int4 (groups of 32), the LoRA adapter
in float32 beside them, not merged. For each: validation perplexity (the training loss's own encoding, assistant
tokens) on the set the model was tuned on, and for the Xbox model the greedy answers to its 24 validation
prompts scored by ROUGE-L against the references (the evaluation's own metric); the weights' memory too.

The issue's limits, checked and printed: perplexity within 2 % of float32's for int8 and 5 % for int4 on both
sets; Xbox ROUGE-L within 0.02 (int8) and 0.04 (int4) of float32's. Uses a fresh TEMPERING_HOME under /tmp
unless one is set. Prints one table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TQA = REPO.parent / "shared" / "data" / "phi3-cookbook"
BASE = "smollm2-135m-instruct"
LIMITS = {"int8": (0.02, 0.02), "int4": (0.05, 0.04)}  # perplexity ratio - 1, ROUGE-L points below float32


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--xbox-epochs", type=int, default=2)
    p.add_argument("--tqa-examples", type=int, default=128, help="TruthfulQA training rows (of 706; default 128)")
    p.add_argument("--tqa-epochs", type=int, default=1)
    p.add_argument("--new-tokens", type=int, default=64, help="greedy answer length for ROUGE-L (default 64)")
    p.add_argument("--xbox-model", help="a fine-tuned model of the Xbox sample in this TEMPERING_HOME")
    p.add_argument("--tqa-model", help="a fine-tuned model of TruthfulQA in this TEMPERING_HOME")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args(argv)


def fine_tune(train: Path, valid: Path, epochs: int) -> str:
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    config = parse_config({"model": BASE, "training_file": train, "validation_file": valid, "seed": 1,
                           "evaluate": False, "hyperparameters": {"n_epochs": epochs}})
    began = time.perf_counter()
    result = tune(config)
    print(f"trained {result.model_id} on {train.name}: {time.perf_counter() - began:.0f} s, validation loss "
          f"{result.valid_loss:.4f} (base {result.base_valid_loss:.4f})", flush=True)
    return result.model_id


def served(model_id: str, quantization: str):
    """The fine-tuned model as a deployment serves it: base weights quantized, the adapter float, unmerged."""
    from peft import PeftModel

    from tempering.serve import quantize
    from tempering.serve.local import load_chat_model
    from tempering.train import artifacts

    chat = load_chat_model(BASE)
    if quantization != "none":
        getattr(quantize, f"quantize_{quantization}")(chat.model)
    weights_bytes = quantize.tensor_bytes(chat.model)
    adapter, _ = artifacts.resolve_finetuned(model_id)
    chat.model = PeftModel.from_pretrained(chat.model, str(adapter)).eval()
    chat.model_id = model_id
    return chat, weights_bytes


def measure(model_id: str, valid: Path, quantization: str, new_tokens: int | None) -> dict:
    from tempering.data.formats import load_examples
    from tempering.evaluate.measure import answers, chat_loss
    from tempering.evaluate.metrics import final_answer, text_metrics

    examples = [m for m in load_examples(valid, None, None, None)[0] if any(t["role"] == "assistant" for t in m)]
    chat, weights_bytes = served(model_id, quantization)
    loss, cost = chat_loss(chat, examples)
    row = {"perplexity": loss.perplexity, "loss_s": cost.seconds, "weights_mb": weights_bytes / 2**20}
    if new_tokens:
        texts, _, cost = answers(chat, examples, new_tokens)
        row |= {"rouge_l": text_metrics(texts, [final_answer(m) for m in examples]).rouge_l,
                "answer_s": cost.seconds, "answers": texts}
    return row


def table(name: str, rows: dict[str, dict]) -> list[str]:
    """One line per quantization, with the change against float32 and whether it is inside the limit."""
    lines, float32 = [], rows["none"]
    for quantization, row in rows.items():
        line = f"{name:<10} {quantization:<5} {row['weights_mb']:>8.1f} {row['perplexity']:>11.4f}"
        if quantization == "none":
            line += f" {'':>9}"
        else:
            change = row["perplexity"] / float32["perplexity"] - 1
            verdict = "ok" if change <= LIMITS[quantization][0] else "OVER"
            line += f" {change:>+8.2%} {verdict}"
        if "rouge_l" in row:
            line += f" {row['rouge_l']:>8.4f}"
            if quantization != "none":
                drop = float32["rouge_l"] - row["rouge_l"]
                line += f" {-drop:>+7.4f} {'ok' if drop <= LIMITS[quantization][1] else 'OVER'}"
            same = sum(a == b for a, b in zip(row["answers"], float32["answers"], strict=True))
            line += f"  {same}/{len(row['answers'])} answers as float32's"
        lines.append(line)
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TEMPERING_HOME", tempfile.mkdtemp(prefix="tempering-bench-"))
    import torch

    torch.set_num_threads(args.threads)
    from tempering.cli.common import quiet_libraries

    quiet_libraries()
    xbox_train, xbox_valid = REPO / "examples/xbox-support/train.jsonl", REPO / "examples/xbox-support/validation.jsonl"
    sets = {"xbox": (args.xbox_model or fine_tune(xbox_train, xbox_valid, args.xbox_epochs), xbox_valid, True)}
    if (TQA / "truthfulqa_text_train.jsonl").exists():
        tqa_valid = TQA / "truthfulqa_text_valid.jsonl"
        model = args.tqa_model
        if model is None:
            work = Path(tempfile.mkdtemp(prefix="tqa-"))
            rows = (TQA / "truthfulqa_text_train.jsonl").read_text(encoding="utf-8").splitlines()[: args.tqa_examples]
            (work / "train.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
            model = fine_tune(work / "train.jsonl", tqa_valid, args.tqa_epochs)
        sets["truthfulqa"] = (model, tqa_valid, False)
    else:
        print(f"{TQA} is absent: TruthfulQA skipped", file=sys.stderr)

    lines = [f"{'set':<10} {'q':<5} {'weights MB':>8} {'perplexity':>11} {'vs fp32':>9} {'ROUGE-L':>8} {'vs fp32':>7}"]
    for name, (model, valid, with_answers) in sets.items():
        rows = {}
        for quantization in ("none", "int8", "int4"):
            rows[quantization] = measure(model, valid, quantization, args.new_tokens if with_answers else None)
            print(f"measured {name} {quantization}: perplexity {rows[quantization]['perplexity']:.4f}", flush=True)
        lines += table(name, rows)
    print(f"\nSmolLM2-135M fine-tuned, served with quantized base weights and a float32 LoRA adapter (torch "
          f"{torch.__version__}, {args.threads} threads; limits: int8 perplexity +2 %, ROUGE-L -0.02; int4 +5 %, "
          "-0.04)")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
