"""``tempering chat``: one answer, or an interactive session, with a base or fine-tuned model."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.prompt import Prompt

from tempering.cli.common import err, out, quiet_libraries

EXIT_WORDS = {"/exit", "/quit", "exit", "quit"}


def _answer(chat_model, messages: list[dict], params) -> str:
    """Stream an answer to the terminal: from the local model, or (``chat_model`` a (client, name) pair) from
    a deployment on a server."""
    if isinstance(chat_model, tuple):
        client, name = chat_model
        pieces = client.chat_stream({"model": name, "messages": messages, "max_tokens": params.max_tokens,
                                     "temperature": params.temperature, "seed": params.seed})
    else:
        from tempering.serve import generate

        pieces = (chunk.text for chunk in generate(chat_model, messages, params))
    parts = []
    for text in pieces:
        out.print(text, end="", highlight=False, markup=False, soft_wrap=True)
        parts.append(text)
    out.print()
    return "".join(parts)


def chat(
    model: Annotated[str, typer.Argument(help="Catalog id or fine-tuned model id (ft:…); with --server, a "
                                              "deployment's name (or the model it serves).")],
    message: Annotated[str | None, typer.Argument(help="One message; omit it for an interactive session.")]
    = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = always the likeliest token.")] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    server: Annotated[str | None, typer.Option(help="Chat with a deployment on this Tempering server "
                                                    "(the playground of a deployment) instead of a local model.")]
    = None,
    api_key: Annotated[str | None, typer.Option(envvar="TEMPERING_API_KEY", help="API key for --server.")] = None,
) -> None:
    """Chat with a model: print one answer, or talk until /exit (or Ctrl-D)."""
    quiet_libraries()
    from tempering.serve.params import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    if server:
        from tempering.client import TemperingClient

        chat_model = (TemperingClient(server, api_key, timeout=600), model)
    else:
        from tempering.serve import load_chat_model

        chat_model = load_chat_model(model)
    history = [{"role": "system", "content": system}] if system else []
    if message is not None:
        _answer(chat_model, history + [{"role": "user", "content": message}], params)
        return
    err.print(f"[dim]Chatting with {model}. /exit or Ctrl-D to stop.[/]")
    while True:
        try:
            text = Prompt.ask("[bold cyan]you[/]", console=err)
        except (EOFError, KeyboardInterrupt):
            err.print()
            return
        if text.strip().lower() in EXIT_WORDS:
            return
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        history.append({"role": "assistant", "content": _answer(chat_model, history, params)})
