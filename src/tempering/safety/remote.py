"""Remote scorers: the same ``score(texts)`` interface over Azure AI Content Safety (text analysis and Prompt
Shields) or any OpenAI-compatible ``/moderations`` endpoint (OpenAI's, or another Tempering server), combined
with the local classifier for the categories the remote one does not provide (profanity, custom categories;
jailbreak for OpenAI). A remote failure raises ``RemoteScorerError``; the filter then follows the policy's
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


Backend = Literal["local", "azure", "openai"]


def make_scorer(backend: Backend = "local", *, endpoint: str | None = None, api_key: str | None = None,
                model: str = "omni-moderation-latest", http: httpx.Client | None = None):
    """A scorer by registry name (never an import path): ``local``; ``azure`` (endpoint and key of an Azure
    AI Content Safety resource); ``openai`` (an OpenAI-compatible ``…/v1`` base URL and key). The remote ones
    fall back to the local classifier for what they do not classify."""
    from tempering.safety.classify import default_classifier

    if backend == "local":
        return default_classifier()
    if not endpoint or not api_key:
        raise ValueError(f"the {backend} content-safety backend needs an endpoint and an API key")
    if backend == "azure":
        return CombinedScorer(AzureContentSafetyScorer(endpoint, api_key, http=http), LocalClassifier())
    if backend == "openai":
        return CombinedScorer(OpenAIModerationScorer(endpoint, api_key, model=model, http=http), LocalClassifier())
    raise ValueError(f"unknown content-safety backend {backend!r}: local, azure or openai")
