"""OpenAI's response objects for served requests: a whole chat completion or completion, and the chunks of a
stream, built from the chat service's results (``services.chat``). Rendering only: no rules live here."""

from __future__ import annotations

import json
import secrets

from tempering.api.protocol_serving import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    TokenLogprobWire,
    TopLogprobWire,
)
from tempering.serve.params import TokenLogprob

FINGERPRINT = "fp_tempering"


def wire_logprobs(records: list[TokenLogprob]) -> list[TokenLogprobWire]:
    return [TokenLogprobWire(token=r.token, logprob=r.logprob, bytes=list(r.token.encode("utf-8")),
                             top_logprobs=[TopLogprobWire(token=t.token, logprob=t.logprob,
                                                          bytes=list(t.token.encode("utf-8"))) for t in r.top])
            for r in records]


def sse(payload) -> str:
    data = payload.model_dump_json(exclude_none=False) if hasattr(payload, "model_dump_json") else json.dumps(payload)
    return f"data: {data}\n\n"


class ChatShape:
    @staticmethod
    def new_id() -> str:
        return "chatcmpl-" + secrets.token_urlsafe(18)

    @staticmethod
    def whole(ident, created, served, states, usage, prompt_filter_results=None):
        choices = [ChatChoice(index=s.index, message=AssistantMessage(content=s.text),
                              logprobs=None if s.logprobs is None else ChoiceLogprobs(content=wire_logprobs(s.logprobs)),
                              finish_reason=s.finish_reason or "stop", content_filter_results=s.content_filter_results)
                   for s in states]
        return ChatCompletion(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                              system_fingerprint=FINGERPRINT, prompt_filter_results=prompt_filter_results)

    @staticmethod
    def prompt_checked(ident, created, served, prompt_filter_results):
        """Azure's first frame when a filter runs: no choices, the prompt's annotation."""
        return ChatCompletionChunk(id=ident, created=created, model=served.model, choices=[],
                                   system_fingerprint=FINGERPRINT, prompt_filter_results=prompt_filter_results)

    @staticmethod
    def opening(ident, created, served, index):
        return ChatShape._chunk(ident, created, served, [ChunkChoice(index=index, delta=ChunkDelta(role="assistant",
                                                                                                     content=""))])

    @staticmethod
    def piece(ident, created, served, index, text, logprobs, finish, content_filter_results=None):
        lp = ChoiceLogprobs(content=wire_logprobs(logprobs)) if logprobs else None
        delta = ChunkDelta(content=text) if text is not None else ChunkDelta()
        return ChatShape._chunk(ident, created, served, [ChunkChoice(index=index, delta=delta, logprobs=lp,
                                                                      finish_reason=finish,
                                                                      content_filter_results=content_filter_results)])

    @staticmethod
    def usage(ident, created, served, usage):
        return ChatShape._chunk(ident, created, served, [], usage)

    @staticmethod
    def _chunk(ident, created, served, choices, usage=None):
        return ChatCompletionChunk(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                                   system_fingerprint=FINGERPRINT)


class CompletionShape:
    @staticmethod
    def new_id() -> str:
        return "cmpl-" + secrets.token_urlsafe(18)

    @staticmethod
    def _logprobs(records: list[TokenLogprob] | None, start: int = 0) -> CompletionLogprobs | None:
        if records is None:
            return None
        offsets, at = [], start
        for r in records:
            offsets.append(at)
            at += len(r.token)
        return CompletionLogprobs(tokens=[r.token for r in records], token_logprobs=[r.logprob for r in records],
                                  top_logprobs=[{t.token: t.logprob for t in r.top} for r in records],
                                  text_offset=offsets)

    @staticmethod
    def whole(ident, created, served, states, usage, prompt_filter_results=None):
        choices = [CompletionChoice(index=s.index, text=s.text, logprobs=CompletionShape._logprobs(s.logprobs),
                                    finish_reason=s.finish_reason or "stop",
                                    content_filter_results=s.content_filter_results) for s in states]
        return Completion(id=ident, created=created, model=served.model, choices=choices, usage=usage,
                          system_fingerprint=FINGERPRINT, prompt_filter_results=prompt_filter_results)

    @staticmethod
    def prompt_checked(ident, created, served, prompt_filter_results):
        return Completion(id=ident, created=created, model=served.model, choices=[], system_fingerprint=FINGERPRINT,
                          prompt_filter_results=prompt_filter_results)

    @staticmethod
    def opening(ident, created, served, index):
        return CompletionShape.piece(ident, created, served, index, "", [], None)

    @staticmethod
    def piece(ident, created, served, index, text, logprobs, finish, content_filter_results=None):
        lp = CompletionShape._logprobs(logprobs) if logprobs else None
        return Completion(id=ident, created=created, model=served.model, system_fingerprint=FINGERPRINT,
                          choices=[CompletionChoice(index=index, text=text or "", logprobs=lp, finish_reason=finish,
                                                    content_filter_results=content_filter_results)])

    @staticmethod
    def usage(ident, created, served, usage):
        return Completion(id=ident, created=created, model=served.model, choices=[], usage=usage,
                          system_fingerprint=FINGERPRINT)
