"""Remote scorers: the same ``score(texts)`` interface over Azure AI Content Safety (text analysis and Prompt
Shields), any OpenAI-compatible ``/moderations`` endpoint (OpenAI's, or another Tempering server) or a guard
model behind an OpenAI-compatible ``/chat/completions`` (Llama Guard served by vLLM), combined with the local
classifier for the categories the remote one does not provide (profanity, custom categories; jailbreak for
OpenAI and guard models). A remote failure raises ``RemoteScorerError``; the filter then follows the policy's
``fail_closed`` as for any classifier failure.

Severities come back as Azure's levels 0/2/4/6 (``FourSeverityLevels``) and are mapped to the middle of our
bands (safe 0, low 0.3, medium 0.6, high 0.9) so that thresholds mean the same as with the local classifier.
"""

from __future__ import annotations

from typing import Literal

import httpx

from tempering.safety.features import MAX_CHARS
from tempering.safety.policy import HARM, PROMPT_ATTACKS

AZURE_API_VERSION = "2024-09-01"
AZURE_CATEGORIES = {"Hate": "hate", "Sexual": "sexual", "Violence": "violence", "SelfHarm": "self_harm"}
AZURE_SEVERITY = {0: 0.0, 1: 0.0, 2: 0.3, 3: 0.3, 4: 0.6, 5: 0.6, 6: 0.9, 7: 0.9}
# OpenAI's categories folded into ours: the worst of a category and its subcategories
OPENAI_CATEGORIES = {"hate": ("hate", "hate/threatening"), "sexual": ("sexual", "sexual/minors"),
                     "violence": ("violence", "violence/graphic"),
                     "self_harm": ("self-harm", "self-harm/intent", "self-harm/instructions")}
AZURE_MAX_TEXT = 10_000  # the text analysis API's limit per request
# Llama Guard 3 and 4 (the MLCommons hazard taxonomy): the codes that fall in our categories. The others — S2
# non-violent crimes, S5 defamation, S6 specialized advice, S7 privacy, S8 intellectual property, S13 elections,
# S14 code interpreter abuse — are outside them and not reported.
GUARD_CATEGORIES = {"violence": ("S1", "S9"), "sexual": ("S3", "S4", "S12"), "hate": ("S10",),
                    "self_harm": ("S11",)}
GUARD_UNSAFE = 0.6  # an "unsafe" verdict without token probabilities: medium


class RemoteScorerError(RuntimeError):
    """A remote content-safety service that could not answer (unreachable, an error status, a bad body)."""


def _post(http: httpx.Client, url: str, **kwargs) -> dict:
    try:
        response = http.post(url, **kwargs)
    except httpx.HTTPError as exc:
        raise RemoteScorerError(f"cannot reach {url}: {exc}") from exc
    if not response.is_success:
        raise RemoteScorerError(f"{url} answered {response.status_code}: {response.text[:300]}")
    try:
        return response.json()
    except ValueError as exc:
        raise RemoteScorerError(f"{url} answered with something other than JSON") from exc


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit // 2] + text[-(limit // 2):]


class AzureContentSafetyScorer:
    """Azure AI Content Safety: ``text:analyze`` for the four harm categories and ``text:shieldPrompt`` for
    jailbreak (the text as ``userPrompt``) and indirect attack (the text as a document)."""

    categories = frozenset(HARM + PROMPT_ATTACKS)

    def __init__(self, endpoint: str, api_key: str, *, api_version: str = AZURE_API_VERSION,
                 timeout: float = 10.0, http: httpx.Client | None = None):
        self.base = endpoint.rstrip("/") + "/contentsafety/text"
        self.params = {"api-version": api_version}
        self.http = http or httpx.Client(timeout=timeout)
        self.headers = {"Ocp-Apim-Subscription-Key": api_key, "Content-Type": "application/json"}

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        return [self._one(_clip(text, min(AZURE_MAX_TEXT, MAX_CHARS))) for text in texts]

    def _one(self, text: str) -> dict[str, float]:
        analysis = _post(self.http, f"{self.base}:analyze", params=self.params, headers=self.headers,
                         json={"text": text, "categories": list(AZURE_CATEGORIES), "outputType": "FourSeverityLevels"})
        shield = _post(self.http, f"{self.base}:shieldPrompt", params=self.params, headers=self.headers,
                       json={"userPrompt": text, "documents": [text]})
        try:
            scores = {ours: 0.0 for ours in AZURE_CATEGORIES.values()}
            for item in analysis["categoriesAnalysis"]:
                if item["category"] in AZURE_CATEGORIES:
                    scores[AZURE_CATEGORIES[item["category"]]] = AZURE_SEVERITY[int(item.get("severity") or 0)]
            scores["jailbreak"] = 0.99 if shield["userPromptAnalysis"]["attackDetected"] else 0.01
            documents = shield.get("documentsAnalysis") or [{"attackDetected": False}]
            scores["indirect_attack"] = 0.99 if documents[0]["attackDetected"] else 0.01
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RemoteScorerError(f"unexpected answer from Azure AI Content Safety: {exc!r}") from exc
        return scores


class OpenAIModerationScorer:
    """An OpenAI-compatible ``POST {base_url}/moderations``: OpenAI itself, or another Tempering server."""

    categories = frozenset(HARM)

    def __init__(self, base_url: str, api_key: str, *, model: str = "omni-moderation-latest",
                 timeout: float = 10.0, http: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + "/moderations"
        self.model = model
        self.http = http or httpx.Client(timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        body = _post(self.http, self.url, headers=self.headers, json={"input": texts, "model": self.model})
        try:
            results = body["results"]
            if len(results) != len(texts):
                raise ValueError(f"{len(results)} results for {len(texts)} inputs")
            return [{ours: max(float(r["category_scores"].get(name, 0.0)) for name in names)
                     for ours, names in OPENAI_CATEGORIES.items()} for r in results]
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteScorerError(f"unexpected answer from {self.url}: {exc!r}") from exc


def parse_guard_verdict(content: str) -> tuple[bool, set[str]]:
    """A Llama Guard answer: ``safe``, or ``unsafe`` and on the next line the hazard codes (``S1,S10``)."""
    lines = [line.strip() for line in content.strip().splitlines() if line.strip()]
    if not lines or lines[0].lower() not in ("safe", "unsafe"):
        raise ValueError(f"the guard model answered {content[:80]!r}, not 'safe' or 'unsafe'")
    if lines[0].lower() == "safe":
        return False, set()
    codes = {code.strip().upper() for line in lines[1:2] for code in line.split(",") if code.strip()}
    return True, codes


def unsafe_probability(logprobs: dict | None) -> float | None:
    """P(unsafe) from the verdict token's top log-probabilities (the first token that is not blank), renormalised
    over "safe" and "unsafe"; None when the answer carries no log-probabilities for them."""
    import math

    for entry in (logprobs or {}).get("content") or []:
        if not str(entry.get("token", "")).strip():
            continue
        mass = {"safe": 0.0, "unsafe": 0.0}
        seen = set()
        for candidate in [entry, *(entry.get("top_logprobs") or [])]:
            token = str(candidate.get("token", ""))
            word = token.strip().lower()
            if not word or token in seen:  # the chosen token is also in its own top list: count it once
                continue
            seen.add(token)
            # a whole verdict or its first piece ("uns"); "unsafe" before "safe"
            verdict = next((v for v in ("unsafe", "safe") if v.startswith(word) or word.startswith(v)), None)
            if verdict is not None:
                mass[verdict] += math.exp(float(candidate["logprob"]))
        total = mass["safe"] + mass["unsafe"]
        return mass["unsafe"] / total if total > 0 else None
    return None


class GuardModelScorer:
    """A guard model behind an OpenAI-compatible ``POST {base_url}/chat/completions`` (for example Llama Guard 3
    or 4 served by vLLM): each text is the user's turn of a conversation the model's own chat template wraps in
    its safety instructions, answered greedily. ``unsafe`` gives the categories its hazard codes map to
    (``GUARD_CATEGORIES``) the verdict's probability when the server returns log-probabilities (at least 0.5,
    medium), else 0.6 (medium); ``safe`` gives 0 everywhere. One request per text."""

    categories = frozenset(HARM)

    def __init__(self, base_url: str, api_key: str, *, model: str, timeout: float = 30.0,
                 http: httpx.Client | None = None):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.http = http or httpx.Client(timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        return [self._one(_clip(text, MAX_CHARS)) for text in texts]

    def _one(self, text: str) -> dict[str, float]:
        body = _post(self.http, self.url, headers=self.headers, json={
            "model": self.model, "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": 64, "logprobs": True, "top_logprobs": 5})
        try:
            choice = body["choices"][0]
            if choice.get("finish_reason") == "length":  # a cut list of codes could read "S1" for "S12"
                raise ValueError("the guard model's verdict was cut at the token limit")
            unsafe, codes = parse_guard_verdict(choice["message"]["content"])
            probability = unsafe_probability(choice.get("logprobs"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise RemoteScorerError(f"unexpected answer from {self.url}: {exc}") from exc
        level = (GUARD_UNSAFE if probability is None else max(probability, 0.5)) if unsafe else 0.0
        return {ours: level if codes & set(names) else 0.0 for ours, names in GUARD_CATEGORIES.items()}


class LocalClassifier:
    """The process's local classifier as it is now (``default_classifier``, which picks custom categories up
    as they are trained or deleted), for a scorer that lives longer than one request."""

    @property
    def categories(self):
        from tempering.safety.classify import default_classifier

        return default_classifier().categories

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        from tempering.safety.classify import default_classifier

        return default_classifier().score(texts)


class CombinedScorer:
    """Each category from the first scorer that provides it (remote first, the local classifier after)."""

    def __init__(self, *scorers):
        self.scorers = scorers

    @property
    def categories(self):
        return frozenset().union(*(s.categories for s in self.scorers))

    def score(self, texts: list[str]) -> list[dict[str, float]]:
        rows: list[dict[str, float]] = [{} for _ in texts]
        for scorer in self.scorers:
            for row, scores in zip(rows, scorer.score(texts)):
                for name, value in scores.items():
                    row.setdefault(name, value)
        return rows


Backend = Literal["local", "azure", "openai", "guard"]


def make_scorer(backend: Backend = "local", *, endpoint: str | None = None, api_key: str | None = None,
                model: str | None = None, http: httpx.Client | None = None):
    """A scorer by registry name (never an import path): ``local``; ``azure`` (endpoint and key of an Azure
    AI Content Safety resource); ``openai`` (an OpenAI-compatible ``…/v1`` base URL and key; ``model``: the
    moderation model, ``omni-moderation-latest`` unless given); ``guard`` (an OpenAI-compatible ``…/v1`` base URL,
    key and the guard ``model`` it serves). The remote ones fall back to the local classifier for what they do
    not classify."""
    from tempering.safety.classify import default_classifier

    if backend == "local":
        return default_classifier()
    if not endpoint or not api_key:
        raise ValueError(f"the {backend} content-safety backend needs an endpoint and an API key")
    if backend == "azure":
        return CombinedScorer(AzureContentSafetyScorer(endpoint, api_key, http=http), LocalClassifier())
    if backend == "openai":
        return CombinedScorer(OpenAIModerationScorer(endpoint, api_key, model=model or "omni-moderation-latest",
                                                     http=http), LocalClassifier())
    if backend == "guard":
        if not model:
            raise ValueError("the guard content-safety backend needs the name of the guard model it serves")
        return CombinedScorer(GuardModelScorer(endpoint, api_key, model=model, http=http), LocalClassifier())
    raise ValueError(f"unknown content-safety backend {backend!r}: local, azure, openai or guard")
