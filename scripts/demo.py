"""The main job on the embedded default, end to end: validate the bundled Xbox-support data, LoRA
fine-tune SmolLM2-135M-Instruct on it, compare base and fine-tuned validation loss, and let both answer
three held-back questions. Run by ``make demo``; only parses arguments and calls the library.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tempering import catalog
from tempering.cli.common import quiet_libraries
from tempering.cli.tune import run_with_progress
from tempering.data import validate_file
from tempering.serve import SamplingParams, complete, load_chat_model
from tempering.train.config import parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "xbox-support"
console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--learning-rate-multiplier", type=float, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    quiet_libraries()
    started = time.perf_counter()

    card = catalog.get_card(catalog.DEFAULT_MODEL_ID)
    catalog.resolve_weights(card)  # de-quantize and cache the embedded model once
    tokenizer = catalog.load_tokenizer(card)
    train, valid = EXAMPLE / "train.jsonl", EXAMPLE / "validation.jsonl"
    for path in (train, valid):
        report = validate_file(path, tokenizer=tokenizer, context_length=card.context_length, min_examples=1)
        status = "[green]valid[/]" if report.valid else "[red]invalid[/]"
        console.print(f"{status} {path.name}: {report.stats['examples']} examples, "
                      f"{report.stats['tokens_per_example']['total']:,} tokens, {len(report.errors)} errors")
        if not report.valid:
            raise SystemExit(1)

    hyperparameters = {"n_epochs": args.epochs, "learning_rate_multiplier": args.learning_rate_multiplier}
    config = parse_config({
        "model": card.id, "training_file": train, "validation_file": valid, "suffix": "xbox-support",
        "seed": args.seed, "hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None},
    })
    result = run_with_progress(config, console)

    table = Table(title="Validation loss on validation.jsonl", title_justify="left")
    for column in ("model", "loss", "perplexity", "mean token accuracy"):
        table.add_column(column)
    for name, loss, acc in (("base", result.base_valid_loss, result.base_valid_mean_token_accuracy),
                            ("fine-tuned", result.valid_loss, result.valid_mean_token_accuracy)):
        table.add_row(name, f"{loss:.4f}", f"{math.exp(loss):.2f}", f"{acc:.3f}")
    console.print(table)

    system = json.loads(valid.read_text(encoding="utf-8").splitlines()[0])["messages"][0]
    questions = [json.loads(line)["question"] for line in (EXAMPLE / "questions.jsonl").read_text().splitlines()]
    params = SamplingParams(max_tokens=160)
    models = {"base": load_chat_model(card.id), "fine-tuned": load_chat_model(result.model_id)}
    for question in questions:
        messages = [system, {"role": "user", "content": question}]
        body = "\n\n".join(f"[bold]{name}:[/] {complete(m, messages, params).strip()}" for name, m in models.items())
        console.print(Panel(body, title=question, title_align="left"))

    if result.evaluation and result.evaluation.get("verdict"):
        console.print(f"Evaluation report ({result.run_dir}/evaluation.json): {result.evaluation['verdict']}")
    better = result.valid_loss < result.base_valid_loss
    verdict = "[green]lower than[/]" if better else "[red]NOT lower than[/]"
    console.print(f"Fine-tuned validation loss {result.valid_loss:.4f} is {verdict} the base model's "
                  f"{result.base_valid_loss:.4f}. Model: {result.model_id}. "
                  f"Total {time.perf_counter() - started:.0f} s.")
    console.print(f"Chat with it: tempering chat {result.model_id}")
    console.print("Or in the web portal: run [bold].venv/bin/tempering serve[/], open [bold]http://127.0.0.1:8000/[/] "
                  "and sign in as admin with the password it prints at its first start (its Models page lists "
                  "this model; deploy it and open the playground).")
    raise SystemExit(0 if better else 1)


if __name__ == "__main__":
    main()
