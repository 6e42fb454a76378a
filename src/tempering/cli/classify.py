"""``tempering classify``: the label a fine-tuned classification model gives a text."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, quiet_libraries


def classify(
    model: Annotated[str, typer.Argument(help="Fine-tuned classification model id (ft:…).")],
    text: Annotated[list[str], typer.Argument(help="One or more texts to classify.")],
    top: Annotated[int, typer.Option(help="How many labels to show per text.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (every label's probability).")] = False,
) -> None:
    """Classify texts with a model fine-tuned with --task classification."""
    quiet_libraries()
    from tempering.serve.classify import load_classifier_model

    results = load_classifier_model(model).classify(text)
    if as_json:
        print_json([{"text": t, **r} for t, r in zip(text, results)])
        return
    table = Table()
    for column in ("text", "label", "probability", "next best"):
        table.add_column(column, overflow="fold")
    for t, r in zip(text, results):
        ranked = list(r["scores"].items())
        others = ", ".join(f"{label} {p:.2f}" for label, p in ranked[1:top])
        table.add_row(t, r["label"], f"{ranked[0][1]:.3f}", others)
    out.print(table)
