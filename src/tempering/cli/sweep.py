"""``tempering sweep``: run a hyperparameter sweep on a Tempering server (its trials are jobs its workers
run) and print the best trial's model; ``tempering sweeps list / show / cancel``. The search space is the
API's: a JSON file of parameter specs (``--space``), or the default one (docs/sweeps.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import err, out, print_json, safe
from tempering.errors import InvalidConfigError, TemperingError

app = typer.Typer(help="Hyperparameter sweeps on a Tempering server: list, show, cancel.", no_args_is_help=True)
TERMINAL = ("succeeded", "failed", "cancelled")

Server = Annotated[str | None, typer.Option(envvar="TEMPERING_SERVER", help="URL of the Tempering server.")]
ApiKey = Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for the server.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the sweep as JSON.")]


def _client(server: str | None, api_key: str | None):
    from tempering.client import TemperingClient

    if not server:
        raise TemperingError("a sweep runs its trials on a server's workers: pass --server or set "
                             "TEMPERING_SERVER (start one with `tempering serve`)", param="server")
    return TemperingClient(server, api_key)


def _json_file(path: Path | None, param: str):
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidConfigError(f"{param}: {path.name} is not a readable JSON file ({exc})", param=param) from exc


def sweep(
    training_file: Annotated[Path, typer.Argument(help="Training data (any format `tempering tune` reads).",
                                                  exists=True, dir_okay=False)],
    validation: Annotated[Path | None, typer.Option("--validation", exists=True, dir_okay=False,
                                                    help="Validation data: what every trial is scored on; "
                                                    "default: a seeded split of the training file.")] = None,
    model: Annotated[str | None, typer.Option(help="Base model (catalog id).")] = None,
    task: Annotated[str | None, typer.Option(help="chat or classification.")] = None,
    trials: Annotated[int, typer.Option("--trials", help="Trials to run.")] = 6,
    concurrent: Annotated[int, typer.Option("--concurrent", help="Trials queued or running at once.")] = 1,
    space: Annotated[Path | None, typer.Option("--space", exists=True, dir_okay=False, help="JSON list of "
                                               "parameter specs ({path, type, low, high, log, step, choices}); "
                                               "default: learning-rate multiplier, epochs, LoRA rank.")] = None,
    initial: Annotated[Path | None, typer.Option("--initial", exists=True, dir_okay=False, help="JSON list of "
                                                 "parameter sets (path → value) to run first.")] = None,
    config: Annotated[Path | None, typer.Option("--config", exists=True, dir_okay=False, help="JSON object of "
                                                "other job config fields every trial starts from (batch size, "
                                                "LoRA alpha, evaluate, …), as the API's job body takes them.")]
    = None,
    metric: Annotated[str | None, typer.Option(help="valid_loss (default, minimized) or "
                                                    "valid_mean_token_accuracy (maximized).")] = None,
    no_pruning: Annotated[bool, typer.Option("--no-pruning", help="Let every trial finish.")] = False,
    seed: Annotated[int | None, typer.Option(help="The sampler's and every trial's seed.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Put in every trial's model id.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the sweep to its end.")] = True,
    server: Server = None,
    api_key: ApiKey = None,
    as_json: AsJson = False,
) -> None:
    """Run a hyperparameter sweep on a server; prints the best trial's fine-tuned model id."""
    client = _client(server, api_key)
    body = {**(_json_file(config, "config") or {})}
    body.update({k: v for k, v in {"model": model, "task": task, "seed": seed, "suffix": suffix,
                                   "search_space": _json_file(space, "space"),
                                   "initial_trials": _json_file(initial, "initial")}.items() if v is not None})
    body.update(n_trials=trials, max_concurrent_trials=concurrent)
    if metric:
        body["objective"] = {"metric": metric}
    if no_pruning:
        body["pruning"] = {"enabled": False}
    body["training_file"] = client.upload(training_file)["id"]
    if validation is not None:
        body["validation_file"] = client.upload(validation)["id"]
    result = client.create_sweep(body)
    err.print(f"Created sweep {result['id']}: {result['n_trials']} trials")
    if wait:
        result = _follow(client, result)
    _print(result, as_json)
    if wait and result["status"] != "succeeded":
        error = result.get("error") or {}
        raise TemperingError(f"sweep {result['id']} {result['status']}: {error.get('message', '')}".rstrip(": "),
                             code=error.get("code") or "sweep_failed", param=error.get("param"))


def _follow(client, sweep: dict, poll_seconds: float = 2.0) -> dict:
    """Poll the sweep to its end, telling each trial's change of state once."""
    told: dict[int, str] = {}
    while True:
        for trial in sweep["trials"]:
            if told.get(trial["number"]) != trial["state"]:
                told[trial["number"]] = trial["state"]
                score = "" if trial["objective"] is None else f" → {trial['objective']:.4f}"
                err.print(f"[dim]trial {trial['number']} {trial['state']}: {safe(_params(trial['parameters']))}"
                          f"{score}[/]", highlight=False)
        if sweep["status"] in TERMINAL:
            return sweep
        time.sleep(poll_seconds)
        sweep = client.sweep(sweep["id"])


def _params(params: dict) -> str:
    return ", ".join(f"{path.rsplit('.', 1)[-1]}={value:.4g}" if isinstance(value, float)
                     else f"{path.rsplit('.', 1)[-1]}={value}" for path, value in params.items())


def _print(sweep: dict, as_json: bool) -> None:
    if as_json:
        print_json(sweep)
        return
    table = Table(title=f"Sweep {sweep['id']} ({sweep['status']}; {sweep['objective']['metric']})",
                  title_justify="left")
    paths = [spec["path"] for spec in sweep["search_space"]]
    for column in ("trial", "state", *paths, "objective", "job"):
        table.add_column(column)
    for trial in sweep["trials"]:
        best = " ★" if trial["number"] == sweep.get("best_trial") else ""
        values = [safe(trial["parameters"].get(p, "—")) for p in paths]
        objective = "—" if trial["objective"] is None else f"{trial['objective']:.4f}"
        table.add_row(f"{trial['number']}{best}", trial["state"], *values, objective, trial["fine_tuning_job_id"])
    err.print(table)
    if sweep.get("fine_tuned_model"):
        out.print(sweep["fine_tuned_model"])


@app.command("list")
def list_sweeps(server: Server = None, api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """The project's sweeps, newest first."""
    rows = _client(server, api_key).sweeps()
    if as_json:
        print_json(rows)
        return
    table = Table()
    for column in ("id", "status", "trials", "best", "fine-tuned model"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["id"], row["status"], f"{len(row['trials'])}/{row['n_trials']}",
                      "—" if row["best_trial"] is None else str(row["best_trial"]), row["fine_tuned_model"] or "—")
    out.print(table)


@app.command("show")
def show(sweep_id: Annotated[str, typer.Argument(help="The sweep's id.")], server: Server = None,
         api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """A sweep's trials side by side (parameters, state, objective; the best marked ★)."""
    _print(_client(server, api_key).sweep(sweep_id), as_json)


@app.command("cancel")
def cancel(sweep_id: Annotated[str, typer.Argument(help="The sweep's id.")], server: Server = None,
           api_key: ApiKey = None, as_json: AsJson = False) -> None:
    """Cancel a sweep and its running trials' jobs."""
    _print(_client(server, api_key).cancel_sweep(sweep_id), as_json)
