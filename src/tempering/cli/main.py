"""Entry point: assembles the command groups. Thin on purpose."""

from __future__ import annotations

import typer

from tempering.cli import (
    access,
    backup,
    blocklists,
    calibrate,
    categories,
    chat,
    classify,
    data,
    deploy,
    evaluate,
    export,
    models,
    moderate,
    serve,
    sweep,
    tune,
    usage,
)
from tempering.cli.common import ErrorTranslatingGroup

app = typer.Typer(
    cls=ErrorTranslatingGroup,
    help="Tempering: fine-tune small language models on your own machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(models.app, name="models")
app.add_typer(data.app, name="data")
app.command("tune")(tune.tune)
app.command("sweep")(sweep.sweep)
app.add_typer(sweep.app, name="sweeps")
app.command("chat")(chat.chat)
app.command("classify")(classify.classify)
app.command("moderate")(moderate.moderate)
app.add_typer(blocklists.app, name="blocklists")
app.add_typer(categories.app, name="categories")
app.command("eval")(evaluate.evaluate)
app.command("export")(export.export)
app.command("serve")(serve.serve)
app.command("deploy")(deploy.deploy)
app.add_typer(deploy.app, name="deployments")
app.command("worker")(serve.worker)
app.command("calibrate")(calibrate.calibrate)
app.add_typer(access.users, name="users")
app.add_typer(access.hubs, name="hubs")
app.add_typer(access.projects, name="projects")
app.add_typer(access.keys, name="keys")
app.command("usage")(usage.usage)
app.command("backup")(backup.backup)
app.command("restore")(backup.restore)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
