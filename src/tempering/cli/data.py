"""``tempering data``: convert, check, report on and split training data before any job runs.

With ``--json`` a command prints exactly one JSON object on stdout whatever happens: its result, or
``{"error": {"message", "code", "param"}}`` (plus the conversion ``report`` when the data could not be
read), and exits 1 on failure.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering import catalog
from tempering.cli.common import err, out, print_json, quiet_libraries, safe
from tempering.data import ValidationReport
from tempering.data.findings import Distribution, infer_labels
from tempering.data.findings.finding import bin_label
from tempering.data.formats import FORMATS, read_examples, validate_any, write_jsonl
from tempering.data.report import DataReport, report_files
from tempering.data.split import split_examples
from tempering.errors import InvalidConfigError, TemperingError

app = typer.Typer(help="Convert, validate, report on and split training data.", no_args_is_help=True)

SHOWN_ISSUES = 50


def _issues_table(report: ValidationReport) -> Table:
    table = Table(title=report.path, title_justify="left")
    for column in ("line", "level", "code", "message"):
        table.add_column(column, overflow="fold")
    issues = [("error", i) for i in report.errors] + [("warning", i) for i in report.warnings]
    for level, issue in issues[:SHOWN_ISSUES]:
        style = "red" if level == "error" else "yellow"
        table.add_row(
            "" if issue.line is None else str(issue.line),
            f"[{style}]{level}[/]",
            issue.code,
            safe(issue.message),
        )
    if len(issues) > SHOWN_ISSUES:
        table.caption = f"… and {len(issues) - SHOWN_ISSUES} more (use --json to see them all)"
    return table


def _stats_line(stats: dict) -> str:
    roles = ", ".join(f"{n} {role}" for role, n in stats.get("messages_by_role", {}).items())
    line = f"{stats['examples']} examples ({roles or 'no messages'})"
    tokens = stats.get("tokens_per_example")
    if tokens:
        line += (
            f"; tokens per example min {tokens['min']}, median {tokens['median']:g}, "
            f"p95 {tokens['p95']}, max {tokens['max']}, total {tokens['total']:,}"
        )
    return line


# Options shared by the commands below; their help text lives here once.
FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format", help=f"Input format, one of {', '.join(FORMATS)} (default: detected from the file)."
    ),
]
TextColumn = Annotated[
    str | None,
    typer.Option(
        help="Classification: the column holding the text (default: detected, e.g. text, sentence, query)."
    ),
]
LabelColumn = Annotated[
    str | None,
    typer.Option(
        help="Classification: the column holding the label (default: detected, e.g. label, category, intent)."
    ),
]
ModelOption = Annotated[
    str, typer.Option(help="Catalog id whose tokenizer, chat template and context length count tokens.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
SkipInvalid = Annotated[
    bool,
    typer.Option(help="Leave out lines that fail to convert (they are still listed) instead of stopping."),
]
OutputFormat = Annotated[
    str,
    typer.Option("--to", help='Write chat JSONL ({"messages"}) or classification JSONL ({"text","label"}).'),
]
# Existence is checked in the command (``_existing``), not by Click, so --json can report it as JSON.
InputFile = Annotated[Path, typer.Argument(help="Training data in any supported format.")]


def _existing(path: Path | None, param: str = "file") -> Path | None:
    if path is not None and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InvalidConfigError(f"{path} {what}", param=param, code="file_not_found")
    return path


@contextmanager
def _json_errors(as_json: bool) -> Iterator[None]:
    """Under --json, any failure becomes one JSON error object on stdout and exit 1; otherwise errors go
    to the CLI's one handler (a red line). An unexpected exception also leaves its traceback on stderr."""
    if not as_json:
        yield
        return
    try:
        yield
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except TemperingError as exc:
        report = getattr(exc, "report", None)
        _print_error(exc.message, exc.code, exc.param, report)
        raise typer.Exit(1) from exc
    except Exception as exc:  # a bug: still one JSON object, and the traceback for whoever reports it
        traceback.print_exc(file=sys.stderr)
        _print_error(f"internal error: {type(exc).__name__}: {exc}", "internal_error", None, None)
        raise typer.Exit(1) from exc


def _print_error(message: str, code: str, param: str | None, report) -> None:
    payload: dict = {"error": {"message": message, "code": code, "param": param}}
    if report is not None:
        payload["report"] = report.model_dump(mode="json")
    print_json(payload)


@app.command("validate")
def validate(
    file: InputFile,
    model: ModelOption = catalog.DEFAULT_MODEL_ID,
    format: FormatOption = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    as_json: JsonOption = False,
) -> None:
    """Check a training file and report every problem with its line number. Exit 0 if valid, 1 if not."""
    with _json_errors(as_json):
        _existing(file)
        quiet_libraries()
        card = catalog.get_card(model)
        report = validate_any(
            file,
            format,
            text_column=text_column,
            label_column=label_column,
            tokenizer=catalog.load_tokenizer(card),
            context_length=card.context_length,
        )
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        if report.errors or report.warnings:
            out.print(_issues_table(report))
        out.print(_stats_line(report.stats))
        if report.valid:
            out.print(f"[green]valid[/]: {len(report.warnings)} warning(s)")
        else:
            err.print(
                f"[bold red]invalid[/]: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
            )
    raise typer.Exit(0 if report.valid else 1)


def _read(file: Path, format, text_column, label_column, skip_invalid: bool, as_json: bool = False):
    """Examples and their conversion report; on bad lines, stops (exit 1, problems shown) unless skipping.
    Under --json the problems stay out of the terminal: they travel in the one JSON object."""
    examples, report = read_examples(
        _existing(file), format, text_column=text_column, label_column=label_column
    )
    if (report.errors or report.warnings) and not as_json:
        err.print(_issues_table(report))
    if not examples or (report.errors and not skip_invalid):
        message = f"not converted: {report.summary()}" + (
            "" if not examples else "; fix the lines or pass --skip-invalid"
        )
        if as_json:
            _print_error(message, "invalid_data", "file", report)
        else:
            err.print(f"[bold red]not converted[/]: {safe(message.removeprefix('not converted: '))}")
        raise typer.Exit(1)
    return examples, report


@app.command("convert")
def convert(
    file: InputFile,
    output: Annotated[Path, typer.Argument(help="JSONL file to write.", dir_okay=False)],
    format: FormatOption = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    to: OutputFormat = "chat",
    skip_invalid: SkipInvalid = False,
) -> None:
    """Convert any supported format to canonical chat JSONL (or classification rows with --to)."""
    if to not in ("chat", "classification"):
        raise typer.BadParameter("use chat or classification", param_hint="--to")
    examples, report = _read(file, format, text_column, label_column, skip_invalid)
    write_jsonl(examples, output, to)
    skipped = report.stats["examples"] - len(examples)
    err.print(
        f"[green]converted[/] {len(examples)} {report.format} example(s) to {to} JSONL"
        + (f", skipped {skipped} bad line(s)" if skipped else "")
    )
    out.print(str(output))


# ---------------------------------------------------------------- report


SHOWN_CLASSES = 10


def _dist_row(name: str, d: Distribution | None) -> list[str]:
    if d is None:
        return [name, "—", "—", "—", "—", "—", "—"]
    return [name] + [f"{v:,.0f}" if k != "mean" else f"{v:,.1f}"
                     for k, v in d.model_dump(exclude={"histogram"}).items()]


def _histogram_table(r: DataReport) -> Table | None:
    """Tokens per example in bins, with a bar each."""
    d = r.counts.tokens_per_example
    if d is None or not d.histogram:
        return None
    most = max(b.count for b in d.histogram) or 1
    table = Table(title="Tokens per example", title_justify="left")
    for column, justify in (("tokens", "right"), ("examples", "right"), ("", "left")):
        table.add_column(column, justify=justify)
    for b in d.histogram:
        table.add_row(bin_label(b.low, b.high, whole=True), f"{b.count:,}", "█" * round(30 * b.count / most))
    return table


def _counts_table(r: DataReport) -> Table:
    c = r.counts
    table = Table(title="Counts", title_justify="left")
    for column in ("", "min", "median", "p95", "max", "mean", "total"):
        table.add_column(column, justify="left" if not column else "right")
    table.add_row(*_dist_row("tokens per example", c.tokens_per_example))
    table.add_row(*_dist_row("trained tokens per example", c.trained_tokens_per_example))
    table.add_row(*_dist_row("assistant answer characters", r.diversity.assistant_chars))
    roles = ", ".join(f"{n:,} {role}" for role, n in c.messages_by_role.items())
    tokens = ", ".join(f"{n:,} {role}" for role, n in (c.tokens_by_role or {}).items())
    valid = "" if c.validation_examples is None else f", {c.validation_examples:,} validation examples"
    table.caption = (
        f"{c.examples:,} training examples{valid}; messages: {roles}"
        + (f"; content tokens: {tokens}" if tokens else "")
        + (f"; {len(c.over_context)} over the {c.context_length:,}-token context" if c.context_length else "")
    )
    return table


def _labels_table(r: DataReport) -> Table | None:
    labels = r.labels
    if labels is None:
        return None
    table = Table(
        title=f"Labels ({labels.n_classes} classes, imbalance {labels.imbalance_ratio:g}:1)",
        title_justify="left",
    )
    table.add_column("class")
    table.add_column("train", justify="right")
    if labels.validation_counts is not None:
        table.add_column("validation", justify="right")
    items = list(labels.counts.items())
    shown = (
        items
        if len(items) <= 2 * SHOWN_CLASSES
        else items[:SHOWN_CLASSES] + [("…", None)] + items[-SHOWN_CLASSES:]
    )
    for name, n in shown:
        row = [name, "" if n is None else f"{n:,}"]
        if labels.validation_counts is not None:
            row.append("" if n is None else f"{labels.validation_counts.get(name, 0):,}")
        table.add_row(*row)
    return table


def _overview_table(r: DataReport) -> Table:
    d, dv = r.duplicates, r.diversity
    table = Table(title="Duplicates and diversity", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("exact duplicates", f"{d.exact_extra} ({len(d.exact)} groups)")
    table.add_row("near duplicates", f"{d.near_extra} ({len(d.near)} groups)")
    table.add_row("prompts repeated with other answers", str(len(d.repeated_prompts)))
    if r.validation_file:
        table.add_row(
            "leaked into validation",
            f"{sum(len(g.validation_lines) for g in d.leaked_exact)} exact, "
            f"{sum(len(g.validation_lines) for g in d.leaked_near)} near, "
            f"{sum(len(g.validation_lines) for g in d.leaked_prompts)} same prompt",
        )
    table.add_row(
        "distinct prompts", f"{dv.distinct_prompts:,} (system prompts: {dv.distinct_system_prompts})"
    )
    table.add_row(
        "distinct user openings",
        f"{dv.distinct_user_openings:,}; most common {dv.top_user_opening!r} "
        f"({dv.top_user_opening_share:.1%})",
    )
    table.add_row(
        "distinct final answers",
        f"{dv.distinct_assistant_answers:,}; most common "
        f"{(dv.top_assistant_answer or '')[:50]!r} ({dv.top_assistant_answer_share:.1%})",
    )
    if dv.assistant_length_cv is not None:
        table.add_row("answer length spread (std/mean)", f"{dv.assistant_length_cv:.2f}")
    return table


def _findings_table(r: DataReport) -> Table:
    table = Table(title="Findings", title_justify="left")
    for column in ("level", "code", "message"):
        table.add_column(column, overflow="fold")
    styles = {"error": "red", "warning": "yellow", "info": "dim"}
    for f in r.findings:
        table.add_row(f"[{styles[f.level]}]{f.level}[/]", f.code, safe(f.message))
    return table


@app.command("report")
def report(
    train: InputFile,
    validation: Annotated[
        Path | None,
        typer.Option("--validation", help="Validation data, same format."),
    ] = None,
    model: ModelOption = catalog.DEFAULT_MODEL_ID,
    format: FormatOption = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    as_json: JsonOption = False,
) -> None:
    """Quality report: counts, tokens, duplicates and leakage, labels, diversity, suspicious content."""
    with _json_errors(as_json):
        _existing(train)
        _existing(validation, "validation")
        quiet_libraries()
        card = catalog.get_card(model)
        result = report_files(
            train,
            validation,
            format=format,
            text_column=text_column,
            label_column=label_column,
            tokenizer=catalog.load_tokenizer(card),
            context_length=card.context_length,
            model=card.id,
        )
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    out.print(f"[bold]{result.train_file}[/] ({result.format}), tokens by {card.id}")
    for table in (
        _counts_table(result),
        _histogram_table(result),
        _labels_table(result),
        _overview_table(result),
        _findings_table(result),
    ):
        if table is not None:
            out.print(table)
    style = {"ready": "green", "review": "yellow", "blocked": "bold red"}[result.verdict.status]
    out.print(f"[{style}]{result.verdict.status}[/]: {safe(result.verdict.summary)}")
    for advice in result.verdict.advice:
        out.print(f"  • {safe(advice)}", highlight=False)


# ---------------------------------------------------------------- split


def _split_and_write(file: Path, examples, conversion, validation_fraction, seed, out_dir: Path, to: str):
    """Split, write both halves and ``<name>.split.json``: (result, train, validation, manifest)."""
    import json

    messages = [e.messages for e in examples]
    labels = [e.label for e in examples] if conversion.format == "classification" else infer_labels(messages)
    result = split_examples(messages, labels, validation_fraction, seed)
    train, valid = result.apply(examples)
    stem = file.name.split(".")[0]
    paths = {
        "train_file": out_dir / f"{stem}.train.jsonl",
        "validation_file": out_dir / f"{stem}.validation.jsonl",
    }
    write_jsonl(train, paths["train_file"], to)
    write_jsonl(valid, paths["validation_file"], to)
    manifest = {
        "source": str(file),
        **{k: str(v) for k, v in paths.items()},
        "train_lines": [e.line for e in train],
        "validation_lines": [e.line for e in valid],
        **result.model_dump(mode="json", exclude={"train_indices", "validation_indices"}),
    }
    (out_dir / f"{stem}.split.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return result, train, valid, manifest


@app.command("split")
def split(
    file: InputFile,
    validation_fraction: Annotated[
        float, typer.Option(help="Share of examples held out for validation.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed; the same seed and data give the same split.")] = 0,
    out_dir: Annotated[
        Path,
        typer.Option(
            help="Folder for <name>.train.jsonl, <name>.validation.jsonl and "
            "<name>.split.json (which line went where).",
            file_okay=False,
        ),
    ] = Path("."),
    format: FormatOption = None,
    text_column: TextColumn = None,
    label_column: LabelColumn = None,
    to: OutputFormat = "chat",
    skip_invalid: SkipInvalid = False,
    as_json: JsonOption = False,
) -> None:
    """Split a file into training and validation: seeded, stratified by label, duplicates on one side."""
    with _json_errors(as_json):
        examples, conversion = _read(file, format, text_column, label_column, skip_invalid, as_json)
        result, train, valid, manifest = _split_and_write(
            file, examples, conversion, validation_fraction, seed, out_dir, to
        )
    stem = file.name.split(".")[0]
    paths = {k: manifest[k] for k in ("train_file", "validation_file")}
    if as_json:
        print_json(manifest)
        return
    how = "stratified by label" if result.stratified else "not stratified (no labels)"
    out.print(
        f"{len(train):,} training and {len(valid):,} validation examples ({how}, seed {seed}); "
        f"{result.duplicate_groups} group(s) of examples sharing a prompt kept on one side"
    )
    if result.by_label:
        table = Table(title="Per class", title_justify="left")
        for column in ("class", "train", "validation"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, n in list(result.by_label.items())[: 2 * SHOWN_CLASSES]:
            table.add_row(name, str(n.train), str(n.validation))
        if len(result.by_label) > 2 * SHOWN_CLASSES:
            table.caption = f"… {len(result.by_label) - 2 * SHOWN_CLASSES} more in {stem}.split.json"
        out.print(table)
    for note in result.notes:
        err.print(f"[yellow]note[/]: {safe(note)}", highlight=False)
    for path in paths.values():
        out.print(str(path))
