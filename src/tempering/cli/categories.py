"""``tempering categories``: the content filter's categories on a server (through
``/v1/contentsafety/categories``): list them; a server administrator trains a custom one from a local file of
labelled examples, or deletes one no policy names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, safe
from tempering.cli.deploy import ApiKey, Json, Server, _client
from tempering.client import segment

app = typer.Typer(help="The content filter's categories on a server: list, train a custom one, delete it.",
                  no_args_is_help=True)
PATH = "/contentsafety/categories"
Name = Annotated[str, typer.Argument(help="The category's name: lower-case letters, digits and '_'.")]


@app.command("list")
def list_(server: Server, api_key: ApiKey = None, json_out: Json = False) -> None:
    """Every category a policy may name: built in and custom."""
    rows = _client(server, api_key)._call("GET", PATH)["data"]
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Content-filter categories on {server}", title_justify="left")
    for column in ("name", "kind", "validation AP", "training rows", "description"):
        table.add_column(column)
    for c in rows:
        ap = "-" if c["valid_average_precision"] is None else f"{c['valid_average_precision']:.3f}"
        table.add_row(safe(c["name"]), c["kind"], ap, str(c["training_rows"] or "-"), safe(c["description"]))
    out.print(table)


@app.command("train")
def train(name: Name, file: Annotated[Path, typer.Argument(help='JSON Lines of {"text": "…", "label": 0 or 1}.',
                                                           exists=True, dir_okay=False, readable=True)],
          server: Server, api_key: ApiKey = None, json_out: Json = False) -> None:
    """Train a custom category (server administrators): the file is uploaded to the project, then trained on;
    every project's policies may name the category at once."""
    client = _client(server, api_key)
    uploaded = client.upload(file)
    made = client._call("POST", PATH, json={"name": name, "training_file": uploaded["id"]})
    if json_out:
        print_json(made)
        return
    ap = made["valid_average_precision"]
    out.print(f"Trained [bold]{safe(made['name'])}[/] on {made['training_rows']} rows"
              + ("" if ap is None else f" (validation average precision {ap:.3f})")
              + f"; name it in a policy: '{{\"prompt\": {{\"{safe(made['name'])}\": \"medium\"}}}}'")


@app.command("delete")
def delete(name: Name, server: Server, api_key: ApiKey = None) -> None:
    """Delete a custom category (server administrators); refused while a policy names it."""
    
    _client(server, api_key)._call("DELETE", f"{PATH}/{segment(name)}")
    out.print(f"Deleted the category {safe(name)}")
