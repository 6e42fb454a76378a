"""``tempering backup OUT`` / ``tempering restore IN``: the database and the artifacts, consistent with each
other (``store.backup``). The upgrade procedure they support is in ``docs/scale-out.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tempering.cli.common import out, print_json, safe


def backup(
    folder: Annotated[Path, typer.Argument(help="A new (or empty) folder to write the backup into.",
                                           file_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Back up the database (SQLite backup API or pg_dump) and the artifacts (the home's, or a manifest of the
    shared artifact store's objects), the database first."""
    from tempering.settings import get_settings
    from tempering.store.backup import backup as run_backup

    summary = run_backup(get_settings(), folder)
    if as_json:
        print_json(summary)
        return
    what = f"{summary['objects']} objects in {summary['artifacts']}" if "objects" in summary else "the home's artifacts"
    out.print(f"Backed up the {summary['database']} database (schema {summary['schema_revision']}) and {safe(what)} "
              f"to {safe(folder)}", highlight=False)


def restore(
    folder: Annotated[Path, typer.Argument(help="A folder written by `tempering backup`.", exists=True,
                                           file_okay=False)],
    force: Annotated[bool, typer.Option("--force", help="Replace a home or database that is not empty.")] = False,
) -> None:
    """Restore a backup into an empty home and database (stop every server and worker first). With a shared
    artifact store, checks first that the bucket still holds every object the backup names."""
    from tempering.settings import get_settings
    from tempering.store.backup import restore as run_restore

    summary = run_restore(get_settings(), folder, force=force)
    out.print(f"Restored the {summary['database']} database (schema {summary['schema_revision']}) and the "
              f"artifacts from {safe(folder)}; the next start migrates it forward if this Tempering is newer",
              highlight=False)
