"""The upstream backend: the engine interface over an OpenAI-compatible server (vLLM's, started with
``--enable-lora``, or another Tempering). Prompts are tokenized here, with the chat template training used,
and sent as token ids to ``/completions``, so the upstream serves exactly the trained prompt format; the
adapter is chosen by the upstream model name (vLLM's ``--lora-modules NAME=PATH``). Knows nothing about
the API's own routes."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tempering.errors import TemperingError
from tempering.serve.params import Chunk, SamplingParams, TokenLogprob, TopLogprob

log = logging.getLogger(__name__)
GENERIC = "the upstream server failed to answer"  # what a caller sees; the details go to the server's log


class UpstreamError(TemperingError):
    """An upstream's failure, reported to the caller without the upstream's address or answer (those would
    make the server a port scanner and leak what the upstream said); the server's log has the details."""

    code = "upstream_error"
    kind = "upstream"

    def __init__(self, detail: str):
        super().__init__(GENERIC)
        log.warning("upstream failure: %s", detail)


class UpstreamEngine:
    def __init__(self, url: str, model: str, *, api_key: str | None = None, timeout: float = 600.0):
        base = url.rstrip("/")
        self.url = base if base.endswith("/v1") else f"{base}/v1"
        self.model = model
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers,
                                      timeout=httpx.Timeout(timeout, connect=10.0))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def generate(self, prompt_ids: list[int], params: SamplingParams,
                       adapter: Path | None = None) -> AsyncIterator[Chunk]:
        body = {"model": self.model, "prompt": list(prompt_ids), "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "stream": True,
                "stream_options": {"include_usage": True}}
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs:
            body["logprobs"] = params.top_logprobs
        if params.response_format is not None:  # OpenAI's shape: vLLM enforces it on /completions too
            body["response_format"] = _openai_response_format(params.response_format)
        produced, finish = 0, None
        try:
            async with self.http.stream("POST", "/completions", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise UpstreamError(f"the upstream at {self.url} answered {response.status_code}: "
                                        f"{_message(response)}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    try:
                        event = json.loads(data)
                    except ValueError:
                        raise UpstreamError(f"the upstream at {self.url} sent a malformed event: {data[:200]!r}") \
                            from None
                    if not isinstance(event, dict):
                        raise UpstreamError(f"the upstream at {self.url} sent a non-object event: {data[:200]!r}")
                    if "error" in event:
                        raise UpstreamError(f"the upstream at {self.url} failed mid-stream: {str(event['error'])[:300]}")
                    if event.get("usage"):
                        produced = event["usage"].get("completion_tokens", produced)
                    for choice in _choices(event):
                        logprobs = _logprobs(choice.get("logprobs"))
                        finish = choice.get("finish_reason") or finish
                        if choice.get("text") or logprobs:
                            yield Chunk(choice.get("text") or "", None, logprobs, tokens=len(logprobs) or 1)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"cannot reach the upstream at {self.url}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a reply not shaped as the protocol's
            raise UpstreamError(f"the upstream at {self.url} sent a malformed reply: {exc!r}") from exc
        yield Chunk("", finish or "stop", completion_tokens=produced)


def _choices(event: dict) -> list[dict]:
    choices = event.get("choices") or []
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise UpstreamError(f"the upstream sent malformed choices: {str(choices)[:200]}")
    return choices


def _message(response: httpx.Response) -> str:
    try:
        return response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return response.text[:300]


def _logprobs(data: dict | None) -> list[TokenLogprob]:
    """Legacy completions logprobs (tokens, token_logprobs, top_logprobs) as the engine's records; the
    upstream does not say token ids, so they are -1."""
    if not data or not data.get("tokens"):
        return []
    tops = data.get("top_logprobs") or [None] * len(data["tokens"])
    return [TokenLogprob(token, float(lp if lp is not None else 0.0), -1,
                         [TopLogprob(t, float(v), -1) for t, v in (top or {}).items()])
            for token, lp, top in zip(data["tokens"], data["token_logprobs"], tops)]


def _openai_response_format(spec: dict) -> dict:
    if spec["type"] == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "output", "schema": spec["schema"], "strict": True}}
    if spec["type"] == "json_object":
        return {"type": "json_object"}
    raise UpstreamError(f"an upstream backend cannot enforce a {spec['type']!r} constraint")
