"""Wire models of serving: deployments (Tempering's own resource), chat completions and completions shaped
exactly like OpenAI's, classifications (Tempering's own). Pure pydantic; imports no torch and no database.

Requests accept unknown fields (OpenAI adds fields often; a client that sends one must not break): the
router logs them as ignored. Bounds are checked here so an out-of-range value is a fast 400 naming it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_serializer

from tempering.safety.policy import SafetyPolicy

MAX_N = 16  # choices per request: each is a sequence in the batch
MAX_STOP = 4  # OpenAI's bound on stop sequences
DEPLOYMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,239}$"

DeploymentName = Annotated[str, StringConstraints(pattern=DEPLOYMENT_NAME)]


# -- deployments ----------------------------------------------------------------------------------------------

class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=240, description="A catalog id, a fine-tuned model id, or one "
                       "of its checkpoints (`<id>:ckpt-step-N` as the checkpoints API lists them, or `<id>@step-N`).")
    name: DeploymentName | None = Field(default=None, description="The name clients call it by (`model` in a "
                                        "chat request); unique in the project. Default: the model id.")
    content_filter: bool = Field(default=True, description="Filter prompts and completions (false: the "
                                 "filter is off, no checks and no annotations).")
    content_filter_policy: SafetyPolicy | None = Field(default=None, description="The deployment's content "
                                                       "filter policy (docs/safety.md); default: the server's.")
    max_concurrent_requests: int = Field(default=8, ge=1, le=256, description="Requests served at once; "
                                         "beyond it a request is answered 429 (OpenAI's SDK retries those).")
    max_requests_per_1_minute: int = Field(default=1000, ge=1, le=2**40, description="Requests per minute "
                                           "(a sliding window); beyond it 429 with Retry-After. Default: Azure's "
                                           "serverless 1,000.")
    max_tokens_per_1_minute: int = Field(default=200_000, ge=1, le=2**40, description="Tokens per minute (prompt "
                                         "plus max_tokens × n up front, corrected with the tokens generated; "
                                         "docs/quotas.md). Default: Azure's serverless 200,000.")
    force: bool = Field(default=False, description="Deploy even when the model's evaluation says it is worse "
                        "than its base model.")
    backend: Literal["local", "upstream", "llama.cpp"] = Field(
        default="local", description="'local': the embedded engine (transformers, adapters on a shared base model); "
        "'upstream': forward to an OpenAI-compatible server such as vLLM; 'llama.cpp': llama.cpp on this server "
        "(llama-cpp-python installed), from a GGUF export of the model made on first use.")
    upstream_url: str | None = Field(default=None, max_length=500, pattern=r"^https?://",
                                     description="The upstream server's base URL (…/v1), for backend 'upstream'.")
    upstream_model: str | None = Field(default=None, max_length=240, description="The model name the upstream "
                                       "knows it by (vLLM: the --lora-modules name); default: the model id.")
    base_model: str | None = Field(default=None, max_length=200, description="For backend 'upstream' when the "
                                   "model's files are not on this server: its catalog base model, whose tokenizer "
                                   "and chat template build the prompts.")
    quantization: Literal["none", "int8", "int4"] | None = Field(
        default=None, description="The local engine's weights for this chat deployment: 'none' (the model's dtype: "
        "float32 on a CPU, bfloat16 on a GPU), 'int8' (per channel) or 'int4' (groups of 32), CPU only; adapters "
        "stay float. One engine per base model and quantization (docs/serving.md). Default: the server's "
        "TEMPERING_SERVE_QUANTIZE.")


class DeploymentObject(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    name: str
    model: str
    base_model: str
    task: Literal["chat", "classification"]
    content_filter: bool = Field(description="Whether the content filter runs (the effective policy is enabled).")
    content_filter_policy: SafetyPolicy = Field(description="The policy the deployment runs under: its own, or "
                                                "the server's default.")
    max_concurrent_requests: int
    max_requests_per_1_minute: int = 1000
    max_tokens_per_1_minute: int = 200_000
    backend: Literal["local", "upstream", "llama.cpp"]
    upstream_url: str | None = None
    upstream_model: str | None = None
    quantization: Literal["none", "int8", "int4"] | None = Field(
        default=None, description="The weights the local engine serves it with (its own choice or the server's); "
        "null for other backends and classification models.")
    status: Literal["succeeded"]
    created_at: int
    warnings: list[str] = Field(default_factory=list, description="What the deploy gate warns about without "
                                "refusing (shown on create and get): e.g. a fine-tuned model markedly less safe "
                                "than its base on the red-team check.")


class ContentFilterUpdate(BaseModel):
    """``POST /v1/deployments/{id}/content_filter``: the same choice as when creating a deployment."""

    model_config = ConfigDict(extra="forbid")
    content_filter: bool = Field(default=True, description="false: the filter is off.")
    content_filter_policy: SafetyPolicy | None = Field(default=None, description="The deployment's own policy; "
                                                       "null: the server's default.")


class DeploymentDeleted(BaseModel):
    id: str
    object: Literal["deployment"] = "deployment"
    deleted: bool = True


class Percentiles(BaseModel):
    p50: float | None = None
    p95: float | None = None


class EngineState(BaseModel):
    quantization: Literal["none", "int8", "int4"]
    loaded: bool = Field(description="Whether the engine has loaded (engines load on their first request).")
    memory_bytes: int | None = Field(description="Bytes of the engine's weights, quantized copies and loaded "
                                     "adapters (shared by every deployment on the same base model and "
                                     "quantization); null until loaded.")


class DeploymentMetrics(BaseModel):
    object: Literal["deployment.metrics"] = "deployment.metrics"
    deployment: str
    since: float | None = Field(description="Counted from this time (seconds since the epoch); null: all time.")
    requests: int
    errors: int = Field(description="Requests answered with a status of 400 or more.")
    by_status: dict[str, int]
    latency_ms: Percentiles
    time_to_first_token_ms: Percentiles
    prompt_tokens: int
    completion_tokens: int
    tokens_per_second: float | None = Field(description="Completion tokens per second of request time, over "
                                            "successful requests.")
    content_filter_hits: dict[str, int] = Field(default_factory=dict, description="Per category, requests the "
                                                "content filter blocked (prompts refused and answers cut).")
    content_filtered: dict[str, int] = Field(default_factory=dict, description="Requests the content filter "
                                             "blocked, by direction: prompt, completion.")
    engine: EngineState | None = Field(default=None, description="The local engine serving it on this server; "
                                       "null for other backends and classification models.")


class RequestLogEntry(BaseModel):
    id: str
    object: Literal["deployment.request"] = "deployment.request"
    created_at: float
    endpoint: str
    adapter: str | None
    stream: bool
    status: int
    error_code: str | None
    latency_ms: float
    time_to_first_token_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    filtered: Literal["prompt", "completion"] | None = Field(default=None, description="A content filter hit: "
                                                             "the prompt was refused or an answer cut.")
    filtered_categories: list[str] | None = None


class FilterAnnotated(BaseModel):
    """A response object whose content filter annotations are left out, not null, when the filter is off, so
    a plain OpenAI client sees exactly OpenAI's shape."""

    _absent_when_none: ClassVar[tuple[str, ...]] = ("prompt_filter_results", "content_filter_results")

    @model_serializer(mode="wrap")
    def _drop_absent(self, handler):
        data = handler(self)
        for name in self._absent_when_none:
            if name in data and data[name] is None:
                del data[name]
        return data


# -- chat completions -----------------------------------------------------------------------------------------

class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """The sampling fields chat completions and completions share, with OpenAI's defaults and bounds."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=240)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else value
        if stops is not None and (len(stops) > MAX_STOP or any(not s for s in stops)):
            raise ValueError(f"at most {MAX_STOP} non-empty stop sequences")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    response_format: dict[str, Any] | None = None


class TopLogprobWire(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobWire(TopLogprobWire):
    top_logprobs: list[TopLogprobWire]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprobWire] | None
    refusal: list[TokenLogprobWire] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(FilterAnnotated):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"]
    content_filter_results: dict[str, Any] | None = Field(default=None, description="Azure's per-category "
                                                          "annotation of this choice's text (with a filter).")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(FilterAnnotated):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    service_tier: str | None = None
    prompt_filter_results: list[dict[str, Any]] | None = Field(default=None, description="Azure's annotation "
                                                               "of the prompt (with a filter).")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(FilterAnnotated):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None = None
    content_filter_results: dict[str, Any] | None = None


class ChatCompletionChunk(FilterAnnotated):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    system_fingerprint: str | None = None
    usage: Usage | None = None
    prompt_filter_results: list[dict[str, Any]] | None = None


# -- completions (legacy; what vLLM-style upstreams are spoken to with: prompts as token ids) ------------------

class CompletionRequest(SamplingFields):
    prompt: str | list[int] = Field(description="Text, or token ids (what the upstream backend sends).")
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and (not value or any(i < 0 for i in value)):
            raise ValueError("a token id prompt is a non-empty list of non-negative integers")
        return value


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class CompletionChoice(FilterAnnotated):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "content_filter"] | None
    content_filter_results: dict[str, Any] | None = None


class Completion(FilterAnnotated):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    prompt_filter_results: list[dict[str, Any]] | None = None


# -- classifications ------------------------------------------------------------------------------------------

class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=240)
    input: str | list[str] = Field(description="A text or up to 256 texts.")

    @field_validator("input")
    @classmethod
    def _input(cls, value):
        texts = [value] if isinstance(value, str) else value
        if not texts or len(texts) > 256:
            raise ValueError("between 1 and 256 texts")
        return value


class ClassificationResult(BaseModel):
    index: int
    label: str
    scores: dict[str, float] = Field(description="Every label's probability, likeliest first.")


class ClassificationResponse(BaseModel):
    object: Literal["list"] = "list"
    model: str
    data: list[ClassificationResult]
    usage: Usage
