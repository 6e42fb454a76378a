"""``tempering usage``: a server's usage and costs per day, project, base model and kind (training, hosting,
inference), from ``/v1/organization/usage/…`` and ``/v1/organization/costs``; a table, or CSV with ``--csv``."""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, safe
from tempering.errors import TemperingError

COLUMNS = ("date", "project_id", "model", "kind", "trained_tokens", "input_tokens", "output_tokens",
           "hosting_hours", "cost_usd")
# usage path → (the ledger's kind, the result fields it reports)
KINDS = {"fine_tuning": ("training", ("trained_tokens",)), "hosting": ("hosting", ("hosting_seconds",)),
         "completions": ("inference", ("input_tokens", "output_tokens"))}


def _since(value: str | None) -> int:
    if value is None:
        return int((datetime.now(UTC) - timedelta(days=30)).timestamp())
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise TemperingError(f"--since {value!r} is not a date (YYYY-MM-DD) or an ISO date and time",
                             param="since") from exc
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


def rows(client, start: int, project: str | None) -> list[dict]:
    """One row per day, project, model and kind: quantities and cost."""
    params = {"start_time": start, "bucket_width": "1d", "limit": 31, **({"project_ids": [project]} if project else {})}
    table: dict[tuple, dict] = defaultdict(lambda: dict.fromkeys(COLUMNS[4:], 0))
    for path, (kind, fields) in KINDS.items():
        for bucket in client.buckets(f"usage/{path}", {**params, "group_by": ["project_id", "model"]}):
            day = datetime.fromtimestamp(bucket["start_time"], UTC).date().isoformat()
            for result in bucket["results"]:
                row = table[(day, result["project_id"], result["model"], kind)]
                for name in fields:
                    if name == "hosting_seconds":
                        row["hosting_hours"] += result[name] / 3600
                    else:
                        row[name] += result[name]
    for bucket in client.buckets("costs", {**params, "limit": 180, "group_by": ["project_id", "line_item"]}):
        day = datetime.fromtimestamp(bucket["start_time"], UTC).date().isoformat()
        for result in bucket["results"]:
            model, _, kind = result["line_item"].rpartition(", ")
            table[(day, result["project_id"], model, kind)]["cost_usd"] += result["amount"]["value"]
    return [{**dict(zip(COLUMNS[:4], key, strict=True)), **values} for key, values in sorted(table.items())]


def usage(
    server: Annotated[str, typer.Option(envvar="TEMPERING_SERVER", help="The Tempering server, e.g. "
                                        "http://127.0.0.1:8000 (or TEMPERING_SERVER).")],
    project: Annotated[str | None, typer.Option(help="Only this project (default: every project you have a "
                                                     "role in).")] = None,
    since: Annotated[str | None, typer.Option(help="From this day (YYYY-MM-DD, UTC) or ISO date and time; "
                                                   "default: 30 days ago.")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV (one row per day, project, model and kind).")]
    = False,
    api_key: Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")] = None,
) -> None:
    """Usage and costs on a server: trained tokens, hosting hours, input and output tokens, and what they
    cost, per day, project, base model and kind."""
    from tempering.client import TemperingClient

    found = rows(TemperingClient(server, api_key), _since(since), project)
    if as_csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in found:
            writer.writerow({**row, "hosting_hours": round(row["hosting_hours"], 4),
                             "cost_usd": round(row["cost_usd"], 6)})
        return
    table = Table(*COLUMNS)
    for row in found:
        table.add_row(*(safe(row[c]) for c in COLUMNS[:4]),
                      *(f"{row[c]:,}" for c in ("trained_tokens", "input_tokens", "output_tokens")),
                      f"{row['hosting_hours']:.2f}", f"${row['cost_usd']:.4f}")
    out.print(table if found else "No usage in this period.")
    total = sum(row["cost_usd"] for row in found)
    out.print(f"Total: ${total:.4f}")
