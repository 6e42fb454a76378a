"""``tempering data``: check training data before any job runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering import catalog
from tempering.cli.common import err, out, print_json, quiet_libraries
from tempering.data import ValidationReport, validate_file

app = typer.Typer(help="Validate training data.", no_args_is_help=True)

SHOWN_ISSUES = 50


def _issues_table(report: ValidationReport) -> Table:
    table = Table(title=report.path, title_justify="left")
    for column in ("line", "level", "code", "message"):
        table.add_column(column, overflow="fold")
    issues = [("error", i) for i in report.errors] + [("warning", i) for i in report.warnings]
    for level, issue in issues[:SHOWN_ISSUES]:
        style = "red" if level == "error" else "yellow"
        table.add_row("" if issue.line is None else str(issue.line), f"[{style}]{level}[/]", issue.code,
                      issue.message)
    if len(issues) > SHOWN_ISSUES:
        table.caption = f"… and {len(issues) - SHOWN_ISSUES} more (use --json to see them all)"
    return table


def _stats_line(stats: dict) -> str:
    roles = ", ".join(f"{n} {role}" for role, n in stats.get("messages_by_role", {}).items())
    line = f"{stats['examples']} examples ({roles or 'no messages'})"
    tokens = stats.get("tokens_per_example")
    if tokens:
        line += (f"; tokens per example min {tokens['min']}, median {tokens['median']:g}, "
                 f"p95 {tokens['p95']}, max {tokens['max']}, total {tokens['total']:,}")
    return line


@app.command("validate")
def validate(
    file: Annotated[Path, typer.Argument(help="Chat-completions JSONL file.", exists=True, dir_okay=False)],
    model: Annotated[str, typer.Option(help="Catalog id whose tokenizer and context length count tokens.")]
    = catalog.DEFAULT_MODEL_ID,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a training file and report every problem with its line number. Exit 0 if valid, 1 if not."""
    quiet_libraries()
    card = catalog.get_card(model)
    report = validate_file(file, tokenizer=catalog.load_tokenizer(card), context_length=card.context_length)
    if as_json:
        print_json(report.model_dump(mode="json"))
    else:
        if report.errors or report.warnings:
            out.print(_issues_table(report))
        out.print(_stats_line(report.stats))
        if report.valid:
            out.print(f"[green]valid[/]: {len(report.warnings)} warning(s)")
        else:
            err.print(f"[bold red]invalid[/]: {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    raise typer.Exit(0 if report.valid else 1)
