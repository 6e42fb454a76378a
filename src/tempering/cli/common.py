"""What every command shares: the consoles, JSON output, and the translation of domain errors."""

from __future__ import annotations

import json
import logging
import os

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from tempering.errors import TemperingError

out = Console(emoji=False)  # results: tables, answers, JSON
err = Console(stderr=True, emoji=False)  # progress and errors, so stdout stays machine-readable


class ErrorTranslatingGroup(TyperGroup):
    """Turns a domain error raised by any subcommand into one clear line and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TemperingError as exc:
            err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from exc


def safe(text) -> str:
    """Text from data or errors, shown as is: '[invalid_json]' is a code to print, not rich markup."""
    return escape(str(text))


def print_json(data) -> None:
    out.print_json(json.dumps(data, default=str), highlight=False)


def quiet_libraries() -> None:
    """Keep transformers' and the tokenizers' chatter out of the terminal; our own output says enough."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft)\b")

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("tempering").setLevel(logging.WARNING)
