"""``tempering moderate``: OpenAI-style moderation of texts with the offline classifiers, and the full
content filter verdict (with jailbreak, indirect attack, profanity) under ``--filter``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, safe
from tempering.errors import InvalidConfigError


def moderate(
    text: Annotated[list[str] | None, typer.Argument(help="Texts to check.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Check this file's text (one text, or one "
                                                                   "per line with --lines).")] = None,
    lines: Annotated[bool, typer.Option(help="With --file: each line is a text.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print OpenAI's moderation results as JSON.")] = False,
    show_filter: Annotated[bool, typer.Option("--filter", help="Also show the content filter's annotations "
                                              "(Azure's shape) for each text as a user prompt.")] = False,
) -> None:
    """Moderate texts offline: hate, sexual, violence and self-harm scores, as /v1/moderations answers."""
    texts = list(text or [])
    if file is not None:
        content = file.read_text(encoding="utf-8")
        texts += [t for t in content.splitlines() if t.strip()] if lines else [content]
    if not texts:
        raise InvalidConfigError("give a text or --file", param="text")
    from tempering.safety import check_prompt
    from tempering.safety.moderation import MODEL
    from tempering.safety.moderation import moderate as run

    results = run(texts)
    filters = [check_prompt(t).prompt_filter_results[0]["content_filter_results"] for t in texts] \
        if show_filter else None
    if as_json:
        rows = [{"text": t, **r} for t, r in zip(texts, results)]
        if filters:
            for row, f in zip(rows, filters):
                row["content_filter_results"] = f
        print_json({"model": MODEL, "results": rows})
        return
    table = Table()
    for column in ("text", "flagged", "hate", "sexual", "violence", "self-harm") + (("filter",) if filters else ()):
        table.add_column(column, overflow="fold")
    for i, (t, r) in enumerate(zip(texts, results)):
        s = r["category_scores"]
        row = [safe(t[:200]), "yes" if r["flagged"] else "no",
               *(f"{s[c]:.3f}" for c in ("hate", "sexual", "violence", "self-harm"))]
        if filters:
            hits = [k for k, v in filters[i].items() if isinstance(v, dict) and v.get("filtered")]
            row.append(", ".join(hits) or "passes")
        table.add_row(*row)
    out.print(table)
