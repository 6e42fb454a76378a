"""``tempering tune``: fine-tune a model on a chat JSONL file and print the new model's id."""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tempering.catalog import DEFAULT_MODEL_ID
from tempering.cli.common import err, out, print_json, quiet_libraries, safe
from tempering.train.config import Hyperparameters, LoraSettings, TuneConfig, parse_config


class _ProgressSink:
    """Turns the recipe's events into a rich progress bar (step, loss, tokens/s) and log lines."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def __call__(self, event: dict) -> None:
        data = event["data"]
        if event["type"] == "started":
            self.task = self.progress.add_task("training", total=data["total_steps"], completed=data["step"],
                                               loss="", speed="")
        elif event["type"] == "metrics" and self.task is not None:
            self.progress.update(self.task, completed=data["step"], loss=f"loss {data['train_loss']:.3f}",
                                 speed=f"{data['tokens_per_second']:.0f} tok/s")
        else:
            self.progress.console.print(f"[dim]{safe(event['message'])}[/]", highlight=False)


@contextlib.contextmanager
def _stop_on_interrupt(console):
    """First Ctrl-C asks the run to stop at the next step boundary (keeping a checkpoint); a second one
    interrupts at once."""
    requested = threading.Event()

    def handler(signum, frame):  # signal's signature
        if requested.is_set():
            raise KeyboardInterrupt
        requested.set()
        console.print("[yellow]Stopping after this step (Ctrl-C again to abort now)…[/]")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def run_with_progress(config, console, *, resume: bool = False):
    """Run ``tune`` with a live progress bar (step, loss, tokens/s) on ``console``."""
    from tempering.evaluate.job import tune_and_evaluate as run_tune  # torch loads here, not for --help

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[speed]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress, _stop_on_interrupt(console) as should_stop:
        return run_tune(config, on_event=_ProgressSink(progress), resume=resume, should_stop=should_stop)


def _tune_remote(config: TuneConfig, server: str, api_key: str | None, as_json: bool) -> None:
    """The same job, run by a server: upload the files, create the job, follow its events."""
    from tempering.client import TemperingClient
    from tempering.errors import InvalidConfigError

    client = TemperingClient(server, api_key)
    body = remote_body(config)
    body["training_file"] = client.upload(config.training_file)["id"]
    if config.validation_file is not None:
        body["validation_file"] = client.upload(config.validation_file)["id"]
    job = client.create_job(body)
    err.print(f"Created job {job['id']} on {server}")
    for event in client.follow(job["id"]):
        if event["type"] != "metrics":
            err.print(f"[dim]{safe(event['message'])}[/]", highlight=False)
    job = client.job(job["id"])
    if as_json:
        print_json(job)
    elif job["status"] == "succeeded":
        out.print(job["fine_tuned_model"])
    if job["status"] != "succeeded":
        error = job.get("error") or {}
        raise InvalidConfigError(f"job {job['id']} {job['status']}: {error.get('message', '')}".rstrip(": "),
                                 code=error.get("code"), param=error.get("param"))


def remote_body(config: TuneConfig) -> dict:
    """The API's job body for ``config``: every field the user set (the rest keep the server's defaults, which
    are the config's), the hyperparameters in OpenAI's place; the files are uploaded by the caller."""
    fields = config.model_dump(mode="json", exclude_unset=True, exclude={"training_file", "validation_file",
                                                                         "hyperparameters"})
    hyperparameters = config.hyperparameters.model_dump(mode="json", exclude_unset=True)
    return {"model": config.model, **fields,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}}


def _print_estimate(config, as_json: bool) -> None:
    from tempering.train.estimate import estimate_job

    result = estimate_job(config)
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    table = Table(title="Estimate", title_justify="left", show_header=False)
    for key, value in result.model_dump().items():
        table.add_row(key.replace("_", " "), "—" if value is None else f"{value:,}" if isinstance(value, int)
                      else f"{value:,.2f}" if isinstance(value, float) else str(value))
    out.print(table)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _given(**values) -> dict:
    """Only the options the user set: the rest keep the config's defaults."""
    return {k: v for k, v in values.items() if v is not None}


def _patience(text: str | None):
    """--early-stopping: a number of epochs, or auto; anything else goes to the config to be refused by name."""
    return int(text) if text is not None and text.strip().lstrip("-").isdigit() else text


def _help(field: str, model=TuneConfig) -> str:
    """The option's help is the config field's description: written once, in ``train.config``."""
    return model.model_fields[field].description


def tune(
    training_file: Annotated[Path, typer.Argument(help=_help("training_file"), exists=True, dir_okay=False)],
    validation: Annotated[Path | None, typer.Option("--validation", help=_help("validation_file"),
                                                    exists=True, dir_okay=False)] = None,
    model: Annotated[str | None, typer.Option(help=_help("model") + f" Default: {DEFAULT_MODEL_ID}.")] = None,
    task: Annotated[str | None, typer.Option(help=_help("task") + " Default: chat.")] = None,
    data_format: Annotated[str | None, typer.Option("--format", help=_help("data_format"))] = None,
    text_column: Annotated[str | None, typer.Option(help=_help("text_column"))] = None,
    label_column: Annotated[str | None, typer.Option(help=_help("label_column"))] = None,
    validation_fraction: Annotated[float | None, typer.Option(help=_help("validation_fraction"))] = None,
    epochs: Annotated[int | None, typer.Option(help=_help("n_epochs", Hyperparameters))] = None,
    batch_size: Annotated[int | None, typer.Option(help=_help("batch_size", Hyperparameters))] = None,
    batch_size_multiplier: Annotated[float | None, typer.Option(
        help=_help("batch_size_multiplier", Hyperparameters))] = None,
    learning_rate_multiplier: Annotated[float | None, typer.Option(
        help=_help("learning_rate_multiplier", Hyperparameters))] = None,
    suffix: Annotated[str | None, typer.Option(help=_help("suffix"))] = None,
    seed: Annotated[int | None, typer.Option(help=_help("seed"))] = None,
    lora_rank: Annotated[int | None, typer.Option(help=_help("rank", LoraSettings))] = None,
    lora_alpha: Annotated[int | None, typer.Option(help=_help("alpha", LoraSettings))] = None,
    lora_dropout: Annotated[float | None, typer.Option(help=_help("dropout", LoraSettings))] = None,
    lora_target: Annotated[list[str] | None, typer.Option(help=_help("target_modules", LoraSettings)
                                                          + " Repeat for several.")] = None,
    max_seq_length: Annotated[int | None, typer.Option(help=_help("max_seq_length"))] = None,
    adapter: Annotated[str | None, typer.Option(help=_help("adapter") + " Default: lora.")] = None,
    optimizer: Annotated[str | None, typer.Option(help=_help("optimizer"))] = None,
    label_smoothing: Annotated[float | None, typer.Option(help=_help("label_smoothing"))] = None,
    head_init: Annotated[str | None, typer.Option(help=_help("head_init"))] = None,
    class_weights: Annotated[str | None, typer.Option(help=_help("class_weights"))] = None,
    selection_metric: Annotated[str | None, typer.Option(help=_help("selection_metric"))] = None,
    early_stopping: Annotated[str | None, typer.Option(help=_help("early_stopping"))] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help=_help("warmup_ratio"))] = None,
    weight_decay: Annotated[float | None, typer.Option(help=_help("weight_decay"))] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help=_help("checkpoint_every_steps"))] = None,
    evaluate: Annotated[bool | None, typer.Option("--evaluate/--no-evaluate", help=_help("evaluate"))] = None,
    eval_max_examples: Annotated[int | None, typer.Option(help=_help("eval_max_examples"))] = None,
    eval_answers: Annotated[str | None, typer.Option(help=_help("eval_answers"))] = None,
    device: Annotated[str | None, typer.Option(help=_help("device"))] = None,
    server: Annotated[str | None, typer.Option(envvar="TEMPERING_SERVER", help="URL of a Tempering server: "
                                               "upload the files and run the job there.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run started by this same "
                                                          "command, from its latest checkpoint.")] = False,
    estimate: Annotated[bool, typer.Option("--estimate", help="Only estimate tokens, time and cost; train "
                                                               "nothing.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="End with one JSON object describing the result.")]
    = False,
) -> None:
    """Fine-tune a model (LoRA, DoRA or every weight); prints the new fine-tuned model id."""
    quiet_libraries()
    hyperparameters = _given(n_epochs=epochs, batch_size=batch_size, batch_size_multiplier=batch_size_multiplier,
                             learning_rate_multiplier=learning_rate_multiplier)
    lora = _given(rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                  target_modules=(lora_target[0] if lora_target == ["all-linear"] else lora_target))
    # Only what the user set: the config's own defaults apply to the rest, here and on a server alike.
    config = parse_config({
        "training_file": training_file,
        **_given(model=model, task=task, validation_file=validation, validation_fraction=validation_fraction,
                 data_format=data_format, text_column=text_column, label_column=label_column, suffix=suffix,
                 seed=seed, checkpoint_every_steps=checkpoint_every, max_seq_length=max_seq_length, device=device,
                 evaluate=evaluate, warmup_ratio=warmup_ratio, weight_decay=weight_decay,
                 eval_max_examples=eval_max_examples, eval_answers=eval_answers, adapter=adapter,
                 optimizer=optimizer, label_smoothing=label_smoothing, head_init=head_init,
                 class_weights=class_weights, selection_metric=selection_metric,
                 early_stopping=_patience(early_stopping)),
        **({"hyperparameters": hyperparameters} if hyperparameters else {}),
        **({"lora": lora} if lora else {}),
    })
    if estimate:
        _print_estimate(config, as_json)
        return
    if server:
        _tune_remote(config, server, api_key, as_json)
        return
    result = run_with_progress(config, err, resume=resume)
    from tempering.train.distributed import current_world

    if not current_world().is_main:  # under torchrun, process 0 speaks for the run
        return
    _print_result(result, as_json)


def _print_result(result, as_json: bool) -> None:
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    table = Table(title="Validation", title_justify="left")
    for column in ("model", "loss", "mean token accuracy"):
        table.add_column(column)
    table.add_row(f"base ({result.base_model})", _fmt(result.base_valid_loss),
                  _fmt(result.base_valid_mean_token_accuracy))
    table.add_row("fine-tuned", _fmt(result.valid_loss), _fmt(result.valid_mean_token_accuracy))
    err.print(table)
    if result.classification:
        c = result.classification
        err.print(f"Validation accuracy {c['accuracy']:.4f}, macro-F1 {c['macro_f1']:.4f} on {c['n']} examples")
    if result.selection:
        err.print(f"Kept {result.selection['checkpoint']}: {safe(result.selection['reason'])}")
    err.print(f"{result.trained_tokens:,} trained tokens in {result.seconds:.1f} s; saved to {result.output_dir}")
    out.print(result.model_id)
