"""``tempering eval``: any model (base, fine-tuned, checkpoint) on any supported data file, against a baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import err, out, print_json, quiet_libraries, safe

MODEL_HELP = ("A catalog id, a fine-tuned id (ft:…), or a checkpoint: <fine-tuned id>@step-<N> or the path of a "
              "checkpoint folder (runs/<id>/checkpoints/step-NNNNNN).")


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _row(evaluation) -> list[str]:
    loss = evaluation.loss
    generation, labels = evaluation.generation, evaluation.classification or (
        evaluation.generation.labels if evaluation.generation else None)
    text = generation.text if generation else None
    return [f"{evaluation.model} ({evaluation.kind})", _fmt(loss.loss if loss else None),
            _fmt(loss.perplexity if loss else None), _fmt(generation.exact_match if generation else None),
            _fmt(labels.accuracy if labels else None), _fmt(labels.macro_f1 if labels else None),
            _fmt(text.rouge_l if text else None), _fmt(text.length_ratio if text else None),
            f"{evaluation.cost.seconds:.1f}"]


def _evaluate_remote(model: str, data: Path, train_data: Path | None, options: dict, server: str,
                     api_key: str | None):
    """The same evaluation, run by a server's workers: the report, or the server's error raised."""
    from tempering.client import TemperingClient
    from tempering.errors import TemperingError
    from tempering.evaluate.report import EvaluationReport

    body = {"model": model, **{k: v for k, v in options.items() if k != "compare"},
            "compare_model": options["compare"]}
    evaluation = TemperingClient(server, api_key).evaluate(
        data, body, train_data=train_data, on_created=lambda e: err.print(f"Created evaluation {e['id']} on {server}"))
    if evaluation["status"] != "succeeded":
        error = evaluation.get("error") or {}
        raise TemperingError(f"evaluation {evaluation['id']} {evaluation['status']}: {error.get('message', '')}"
                             .rstrip(": "), code=error.get("code"), param=error.get("param"))
    return EvaluationReport.model_validate(evaluation["report"])


def evaluate(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    data: Annotated[Path, typer.Option("--data", help="Examples with reference answers, in any format "
                                       "`tempering data convert` reads.", exists=True, dir_okay=False)],
    compare: Annotated[str, typer.Option(help="Model to compare with: a model name as for MODEL, 'base' (the "
                                         "base of a fine-tuned MODEL) or 'none'.")] = "base",
    max_examples: Annotated[int, typer.Option(min=1, help="Most examples scored (a seeded sample).")] = 100,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per generated answer.")] = 64,
    answers: Annotated[str, typer.Option(help="labels (accuracy, macro-F1), text (ROUGE-L) or auto: labels "
                                         "when the --train-data answers are a small closed set the references "
                                         "fall in; without --train-data, when the answers repeat from a small "
                                         "set.")] = "auto",
    train_data: Annotated[Path | None, typer.Option(help="The model's training data (any format): its answers "
                                                    "tell whether answers are labels.", exists=True,
                                                    dir_okay=False)] = None,
    data_format: Annotated[str | None, typer.Option("--format", help="Format of the data file; detected "
                                                    "when absent.")] = None,
    text_column: Annotated[str | None, typer.Option(help="Text column of classification data.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Label column of classification data.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    server: Annotated[str | None, typer.Option(envvar="TEMPERING_SERVER", help="URL of a Tempering server: "
                                               "upload the data and evaluate there, on its workers.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole report as JSON.")] = False,
) -> None:
    """Evaluate a model on a data file: loss, greedy answers' metrics, and a verdict against a baseline."""
    quiet_libraries()
    from tempering.errors import InvalidConfigError

    if answers not in ("auto", "labels", "text"):
        raise InvalidConfigError("--answers must be auto, labels or text", param="answers")
    options = {"compare": None if compare == "none" else compare, "max_examples": max_examples,
               "data_format": data_format, "text_column": text_column, "label_column": label_column,
               "answers": answers, "max_new_tokens": max_new_tokens}
    if server:
        if device != "auto":
            raise InvalidConfigError("not available with --server: device (the server's workers choose)",
                                     param="device")
        report = _evaluate_remote(model, data, train_data, options, server, api_key)
    else:
        from tempering.evaluate import evaluate_file

        report = evaluate_file(model, data, train_data=train_data, device=device, allow_paths=True, **options)
    if as_json:
        print_json(report.model_dump(mode="json"))
        return
    table = Table(title=f"{report.data}: {report.n_generated} answered, {report.answer_kind}", title_justify="left")
    for column in ("model", "loss", "perplexity", "exact match", "accuracy", "macro-F1", "ROUGE-L", "length ratio",
                   "seconds"):
        table.add_column(column)
    for evaluation in filter(None, (report.candidate, report.baseline)):
        table.add_row(*_row(evaluation))
    out.print(table)
    for sample in report.samples[:3]:
        err.print(f"[dim]prompt:[/] {safe(sample.prompt[:200])}\n[dim]reference:[/] {safe(sample.reference[:200])}\n"
                  f"[dim]answer:[/] {safe(sample.candidate[:200])}"
                  + (f"\n[dim]baseline:[/] {safe(sample.baseline[:200])}" if sample.baseline is not None else ""),
                  highlight=False)
    if report.verdict is not None:
        out.print(f"[bold]Verdict:[/] {safe(report.verdict.message)}", highlight=False)
