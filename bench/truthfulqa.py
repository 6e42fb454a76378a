"""Phi-3 Cookbook TruthfulQA text set: fine-tune the embedded default on free-text answers.

Fine-tunes on ../shared/data/phi3-cookbook/truthfulqa_text_train.jsonl (706 examples, `{"text"}` in the Phi-3
chat template, read by the data platform's importers) with truthfulqa_text_valid.jsonl (51) as the
validation set, and prints base vs fine-tuned validation loss, perplexity and ROUGE-L (greedy answers through
the serving path) from the job's evaluation report (evaluation.json), with the training and evaluation times
and the load average. The answers are free text, so the report must not take them for labels.

    python bench/truthfulqa.py [--epochs N] [--batch-size B] [--eval-max-examples 51]

Without --epochs/--batch-size/--learning-rate-multiplier the job resolves them as for any user ("auto").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "phi3-cookbook"


def headline(evaluation) -> dict | None:
    """Loss, perplexity, ROUGE-L and answer length of one model in the report."""
    if evaluation is None:
        return None
    loss, generation = evaluation.loss, evaluation.generation
    text = generation.text if generation else None
    return {"model": evaluation.model,
            "valid_loss": round(loss.loss, 4) if loss and loss.loss is not None else None,
            "perplexity": round(loss.perplexity, 3) if loss and loss.perplexity is not None else None,
            "mean_token_accuracy": round(loss.mean_token_accuracy, 4)
            if loss and loss.mean_token_accuracy is not None else None,
            "rouge_l": round(text.rouge_l, 4) if text else None,
            "exact_match": round(generation.exact_match, 4) if generation else None,
            "answer_words": round(text.answer_words, 1) if text else None,
            "reference_words": round(text.reference_words, 1) if text else None,
            "truncated": generation.truncated if generation else None,
            "eval_seconds": evaluation.cost.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # None = the job's "auto", as a new user gets it (the figure is "with the defaults")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate-multiplier", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-max-examples", type=int, default=51,
                        help="Validation examples the automatic evaluation answers (base and fine-tuned).")
    args = parser.parse_args()
    train, valid = DATA / "truthfulqa_text_train.jsonl", DATA / "truthfulqa_text_valid.jsonl"
    if not train.exists() or not valid.exists():
        raise SystemExit(f"{DATA} lacks the TruthfulQA files: this benchmark needs the shared Phi-3 data")

    from tempering.cli.common import quiet_libraries
    from tempering.evaluate import read_report
    from tempering.evaluate.job import tune_and_evaluate as tune
    from tempering.train import TuneConfig

    quiet_libraries()
    config = TuneConfig(
        training_file=train, validation_file=valid, seed=args.seed, suffix="truthfulqa",
        eval_max_examples=args.eval_max_examples,
        hyperparameters={key: value for key, value in (
            ("n_epochs", args.epochs), ("batch_size", args.batch_size),
            ("learning_rate_multiplier", args.learning_rate_multiplier)) if value is not None})
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = tune(config, on_event=lambda e: print(e["message"], flush=True) if e["type"] != "metrics" else None)
    seconds = time.perf_counter() - started
    report = read_report(Path(result.run_dir))
    print(json.dumps({
        "train_examples": result.n_train_examples, "valid_examples": result.n_valid_examples,
        "hyperparameters": result.hyperparameters.model_dump(), "model_id": result.model_id,
        "train_seconds": result.seconds, "total_seconds": round(seconds, 1),
        "load_average_before_after": [round(x, 2) for x in (*load_before[:1], *os.getloadavg()[:1])],
        "answer_kind": report.answer_kind if report else None,
        "answer_kind_from": report.answer_kind_from if report else None,
        "n_generated": report.n_generated if report else None,
        "fine_tuned": headline(report.candidate) if report else None,
        "base": headline(report.baseline) if report else None,
        "eval_seconds": report.cost.seconds if report else None,
        "verdict": report.verdict.message if report and report.verdict else None,
        "samples": [s.model_dump() for s in report.samples[:3]] if report else [],
        "evaluation": f"{result.run_dir}/evaluation.json"}, indent=2))


if __name__ == "__main__":
    main()
