"""``tempering blocklists``: a server project's custom blocklists for the content filter (through
``/v1/contentsafety/text/blocklists``)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, safe
from tempering.cli.deploy import ApiKey, Json, Server, _client
from tempering.client import segment

app = typer.Typer(help="Create, fill, list and delete content-filter blocklists on a server.", no_args_is_help=True)
Name = Annotated[str, typer.Argument(help="Blocklist name (0-9 A-Z a-z . _ ~ -).")]
PATH = "/contentsafety/text/blocklists"


def _list(name: str) -> str:
    """The list's URL path, the name quoted: whatever is typed stays one path segment for the server to judge."""
    return f"{PATH}/{segment(name)}"


@app.command("create")
def create(name: Name, server: Server, description: Annotated[str, typer.Option(help="What it is for.")] = "",
           api_key: ApiKey = None) -> None:
    """Create a blocklist (or update its description)."""
    _client(server, api_key)._call("PATCH", _list(name), json={"description": description})
    out.print(f"Blocklist [bold]{safe(name)}[/] ready; name it in a deployment policy's blocklists.")


@app.command("add")
def add(name: Name, items: Annotated[list[str], typer.Argument(help="Terms (or patterns with --regex).")],
        server: Server, regex: Annotated[bool, typer.Option("--regex", help="Items are regular expressions.")] = False,
        description: Annotated[str, typer.Option(help="Description of each item.")] = "",
        api_key: ApiKey = None, json_out: Json = False) -> None:
    """Add terms or regular expressions to a blocklist."""
    body = {"blocklistItems": [{"text": t, "isRegex": regex, "description": description} for t in items]}
    result = _client(server, api_key)._call("POST", f"{_list(name)}:addOrUpdateBlocklistItems", json=body)
    if json_out:
        print_json(result)
        return
    for item in result["blocklistItems"]:
        out.print(f"{item['blocklistItemId']}  {safe(item['text'])}{'  (regex)' if item['isRegex'] else ''}")


@app.command("list")
def list_(server: Server, name: Annotated[str | None, typer.Argument(help="Show this list's items.")] = None,
          api_key: ApiKey = None, json_out: Json = False) -> None:
    """The project's blocklists, or one blocklist's items."""
    client = _client(server, api_key)
    rows = client._call("GET", f"{_list(name)}/blocklistItems" if name else PATH)["value"]
    if json_out:
        print_json(rows)
        return
    table = Table()
    columns = ("id", "text", "regex", "description") if name else ("name", "description")
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(*((r["blocklistItemId"], safe(r["text"]), "yes" if r["isRegex"] else "", safe(r["description"]))
                        if name else (safe(r["blocklistName"]), safe(r["description"]))))
    out.print(table)


@app.command("remove")
def remove(name: Name, item_ids: Annotated[list[str], typer.Argument(help="Item ids to remove.")], server: Server,
           api_key: ApiKey = None) -> None:
    """Remove items from a blocklist."""
    _client(server, api_key)._call("POST", f"{_list(name)}:removeBlocklistItems", json={"blocklistItemIds": item_ids})
    out.print(f"Removed {len(item_ids)} item(s) from {safe(name)}.")


@app.command("delete")
def delete(name: Name, server: Server, api_key: ApiKey = None) -> None:
    """Delete a blocklist and its items."""
    _client(server, api_key)._call("DELETE", _list(name))
    out.print(f"Deleted blocklist {safe(name)}.")
