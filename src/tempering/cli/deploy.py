"""``tempering deploy`` and ``tempering deployments``: deployments live on a server (``--server``), which
serves them to the OpenAI SDK, the CLI's ``chat --server`` and anything else speaking the chat protocol."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from tempering.cli.common import out, print_json, safe

app = typer.Typer(help="List, inspect and delete a server's deployments.", no_args_is_help=True)

Server = Annotated[str, typer.Option(envvar="TEMPERING_SERVER", help="The Tempering server, e.g. "
                                     "http://127.0.0.1:8000 (or TEMPERING_SERVER).")]
ApiKey = Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")]
Json = Annotated[bool, typer.Option("--json", help="Print the server's JSON.")]


def _client(server: str, api_key: str | None):
    from tempering.client import TemperingClient

    return TemperingClient(server, api_key)


Policy = Annotated[str | None, typer.Option(
    "--policy", help='The content filter\'s own policy as JSON, or @FILE holding it, e.g. \'{"prompt": {"hate": '
    '"low", "jailbreak": "medium"}, "completion": {"hate": "medium"}, "blocklists": ["brands"]}\' '
    '(docs/safety.md); default: the server\'s policy.')]


def _policy(value: str | None) -> dict | None:
    """``--policy``: JSON text, or ``@path`` of a local file holding it; a clear error naming the option."""
    import json
    from pathlib import Path

    if value is None:
        return None
    try:
        text = Path(value[1:]).read_text(encoding="utf-8") if value.startswith("@") else value
        policy = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(f"not a JSON policy: {exc}", param_hint="--policy") from None
    if not isinstance(policy, dict):
        raise typer.BadParameter("a policy is a JSON object (prompt, completion, blocklists, fail_closed, "
                                 "stream_window)", param_hint="--policy")
    return policy


def _print_policy(deployment: dict) -> None:
    """The filter a deployment runs under: each category's threshold per direction, its lists, failure mode."""
    policy = deployment.get("content_filter_policy") or {}
    if not deployment.get("content_filter") or not policy.get("enabled", True):
        out.print(f"{safe(deployment['name'])}: content filter off")
        return
    table = Table(title=f"Content filter of {safe(deployment['name'])}", title_justify="left")
    for column in ("category", "prompt", "completion"):
        table.add_column(column)
    prompt, completion = policy.get("prompt") or {}, policy.get("completion") or {}
    for category in sorted(set(prompt) | set(completion)):
        table.add_row(safe(category), prompt.get(category, "-"), completion.get(category, "-"))
    table.caption = (f"blocklists: {', '.join(map(safe, policy.get('blocklists') or [])) or 'none'}; "
                     f"{'fail closed' if policy.get('fail_closed') else 'fail open'}; "
                     f"stream window {policy.get('stream_window')} characters")
    out.print(table)


def deploy(
    model: Annotated[str, typer.Argument(help="A catalog id, a fine-tuned model id, or a checkpoint "
                                              "(<id>:ckpt-step-N or <id>@step-N).")],
    server: Server,
    name: Annotated[str | None, typer.Option(help="The name clients call it by; default: the model id.")] = None,
    content_filter: Annotated[bool, typer.Option("--content-filter/--no-content-filter",
                                                 help="Filter prompts and completions.")] = True,
    policy: Policy = None,
    max_concurrent: Annotated[int, typer.Option(help="Requests served at once; more are answered 429.")] = 8,
    force: Annotated[bool, typer.Option(help="Deploy even if the model's evaluation says it is worse than its "
                                             "base.")] = False,
    backend: Annotated[str | None, typer.Option(help="local (the embedded engine, default), llama.cpp (needs "
                                                     "llama-cpp-python on the server), or upstream (with "
                                                     "--upstream-url).")] = None,
    upstream_url: Annotated[str | None, typer.Option(help="Serve through an OpenAI-compatible upstream "
                                                          "(vLLM --enable-lora) at this …/v1 URL.")] = None,
    upstream_model: Annotated[str | None, typer.Option(help="The upstream's name for the model (vLLM: the "
                                                            "--lora-modules name).")] = None,
    quantization: Annotated[str | None, typer.Option(help="The local engine's weights: none, int8 or int4 (CPU "
                                                          "only; adapters stay float); default: the server's "
                                                          "setting.")] = None,
    api_key: ApiKey = None,
    json_out: Json = False,
) -> None:
    """Deploy a model on a server: callable at once by name through /v1/chat/completions."""
    body = {"model": model, "name": name, "content_filter": content_filter, "max_concurrent_requests": max_concurrent,
            "force": force, "quantization": quantization, "content_filter_policy": _policy(policy)}
    if upstream_url:
        body |= {"backend": "upstream", "upstream_url": upstream_url, "upstream_model": upstream_model}
    if backend:
        body["backend"] = backend
    created = _client(server, api_key).create_deployment({k: v for k, v in body.items() if v is not None})
    if json_out:
        print_json(created)
        return
    out.print(f"Deployed {safe(created['model'])} as [bold]{safe(created['name'])}[/] ({created['id']}); chat with it: "
              f"model={safe(created['name'])!r} at {server.rstrip('/')}/v1/chat/completions")
    for warning in created.get("warnings") or []:
        out.print(f"[yellow]Warning:[/] {safe(warning)}")


@app.command("list")
def list_deployments(server: Server, api_key: ApiKey = None, json_out: Json = False) -> None:
    """The project's deployments."""
    rows = _client(server, api_key).deployments()
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Deployments on {server}", title_justify="left")
    for column in ("name", "id", "model", "backend", "weights", "filter", "max concurrent"):
        table.add_column(column)
    for d in rows:
        table.add_row(safe(d["name"]), d["id"], safe(d["model"]), d["backend"], d.get("quantization") or "-",
                      "on" if d["content_filter"] else "off", str(d["max_concurrent_requests"]))
    out.print(table)


@app.command("metrics")
def metrics(deployment: Annotated[str, typer.Argument(help="Deployment id or name.")], server: Server,
            api_key: ApiKey = None, json_out: Json = False) -> None:
    """Requests, latency percentiles, time to first token, tokens/s and content filter hits of a deployment."""
    m = _client(server, api_key).deployment_metrics(deployment)
    if json_out:
        print_json(m)
        return

    def ms(p):
        return "-" if p["p50"] is None else f"p50 {p['p50']:.0f} ms, p95 {p['p95']:.0f} ms"

    tps = "-" if m["tokens_per_second"] is None else f"{m['tokens_per_second']:.1f}"
    out.print(f"{m['requests']} requests ({m['errors']} errors); latency {ms(m['latency_ms'])}; first token "
              f"{ms(m['time_to_first_token_ms'])}; tokens in {m['prompt_tokens']}, out {m['completion_tokens']}; "
              f"{tps} tokens/s")
    engine = m.get("engine")
    if engine:
        size = f"{engine['memory_bytes'] / 2**20:.1f} MiB" if engine["memory_bytes"] is not None else "not loaded yet"
        out.print(f"engine: {engine['quantization']} weights, {size}")
    hits = m.get("content_filter_hits") or {}
    if hits:
        out.print("content filter hits: " + ", ".join(f"{safe(k)} {v}" for k, v in sorted(hits.items())) + " ("
                  + ", ".join(f"{safe(k)} {v}" for k, v in sorted((m.get("content_filtered") or {}).items())) + ")")


@app.command("filter")
def content_filter(
    deployment: Annotated[str, typer.Argument(help="Deployment id or name.")],
    server: Server,
    on: Annotated[bool | None, typer.Option("--on/--off", help="Turn the filter on (the server's policy unless "
                                                               "--policy) or off.")] = None,
    policy: Policy = None,
    api_key: ApiKey = None,
    json_out: Json = False,
) -> None:
    """Show a deployment's content filter, or change it: --off, --on (the server's default policy), or --policy
    (its own); the next request runs under it."""
    client = _client(server, api_key)
    if on is None and policy is None:
        shown = client.deployment(deployment)
    elif on is False and policy is not None:
        raise typer.BadParameter("--off takes no --policy", param_hint="--policy")
    else:
        shown = client.set_content_filter(deployment, {"content_filter": on is not False,
                                                       "content_filter_policy": _policy(policy)})
    if json_out:
        print_json(shown)
        return
    _print_policy(shown)


@app.command("delete")
def delete(deployment: Annotated[str, typer.Argument(help="Deployment id or name.")], server: Server,
           api_key: ApiKey = None) -> None:
    """Delete a deployment (its request log is kept)."""
    gone = _client(server, api_key).delete_deployment(deployment)
    out.print(f"Deleted deployment {gone['id']}")
