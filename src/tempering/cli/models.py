"""``tempering models``: the catalog of base models and the fine-tuned models made here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering import catalog
from tempering.cli.common import err, out, print_json
from tempering.train import artifacts

app = typer.Typer(help="Base models in the catalog and fine-tuned models.", no_args_is_help=True)


def _params(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _matches(text: str | None, *fields) -> bool:
    haystack = " ".join(str(f) for f in fields if f).lower()
    return not text or all(word in haystack for word in text.lower().split())


@app.command("list")
def list_models(
    search: Annotated[str | None, typer.Option(help="Only models whose id, name, family or licence "
                                                    "contain every word.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    server: Annotated[str | None, typer.Option(envvar="TEMPERING_SERVER", help="List a Tempering server's "
                                                                               "models instead.")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")]
    = None,
) -> None:
    """List base models (and whether they can be fine-tuned) and the fine-tuned models made here."""
    if server:
        from tempering.client import TemperingClient

        found = [m for m in TemperingClient(server, api_key).models() if _matches(search, m["id"], m["owned_by"])]
        if as_json:
            print_json(found)
        else:
            table = Table(title=f"Models on {server}", title_justify="left")
            table.add_column("id")
            table.add_column("owned by")
            for m in found:
                table.add_row(m["id"], m["owned_by"])
            out.print(table)
        return
    cards = catalog.list_cards(search)
    rows = [{**c.model_dump(mode="json"), "kind": "base", "status": catalog.model_status(c)} for c in cards]
    tuned = [
        {"id": m["id"], "kind": "fine-tuned", "base_model": m["base_model"], "created_at": m["created_at"],
         "fine_tunable": True, "metrics": m.get("metrics", {})}
        for m in artifacts.list_finetuned()
        if _matches(search, m["id"], m["base_model"], "fine-tuned")
    ]
    if as_json:
        print_json(rows + tuned)
        return
    table = Table(title="Base models", title_justify="left")
    for column in ("id", "family", "params", "context", "licence", "fine-tunable", "weights"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["family"], _params(row["parameters"]), f"{row['context_length']:,}",
                      row["license"], "yes" if row["fine_tunable"] else "no", row["status"])
    out.print(table)
    if tuned:
        table = Table(title="Fine-tuned models", title_justify="left")
        for column in ("id", "base model", "validation loss (base → tuned)"):
            table.add_column(column)
        for row in tuned:
            m = row["metrics"]
            losses = (f"{m['base_valid_loss']:.3f} → {m['full_valid_loss']:.3f}"
                      if m.get("full_valid_loss") is not None and m.get("base_valid_loss") is not None else "—")
            table.add_row(row["id"], row["base_model"], losses)
        out.print(table)
    if not rows and not tuned:
        err.print(f"no model matches {search!r}")


@app.command("add-path")
def add_path(
    model_id: Annotated[str, typer.Argument(help="Catalog id (e.g. phi-3-mini-4k-instruct) or a new id.")],
    folder: Annotated[Path, typer.Argument(help="Folder with config.json, tokenizer and *.safetensors.")],
) -> None:
    """Use a local folder of Hugging Face weights for a catalog model (or add a new one)."""
    card = catalog.register_local_path(model_id, folder)
    out.print(f"{card.id}: weights at {card.local_path} ({_params(card.parameters)} parameters)")


@app.command("prepare")
def prepare(
    model_id: Annotated[str, typer.Argument(help="Catalog id.")] = catalog.DEFAULT_MODEL_ID,
) -> None:
    """Make a model ready to use offline (the embedded default is de-quantized and cached once)."""
    path = catalog.resolve_weights(model_id)
    out.print(f"{model_id}: ready at {path}")
