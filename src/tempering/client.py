"""A small client for a Tempering server's REST API, used by the CLI's ``--server`` mode.

Speaks the same OpenAI-compatible protocol as the official SDK (which works too); errors in OpenAI's
envelope become ``TemperingError`` with the server's message, code and param. Knows nothing about torch.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx

from tempering.errors import TemperingError

TERMINAL = ("succeeded", "failed", "cancelled")


class ServerError(TemperingError):
    code = "server_error"


def segment(value: str) -> str:
    """An id or name as one quoted path segment: whatever was typed stays that id (the server judges it)."""
    return quote(str(value), safe="")


class TemperingClient:
    def __init__(self, base_url: str, api_key: str | None, *, timeout: float = 60.0):
        if not api_key:
            raise TemperingError("--server needs an API key: pass --api-key or set TEMPERING_API_KEY",
                                 param="api_key")
        base = base_url.rstrip("/")
        self.http = httpx.Client(base_url=base if base.endswith("/v1") else f"{base}/v1", timeout=timeout,
                                 headers={"Authorization": f"Bearer {api_key}"})

    def _call(self, method: str, path: str, **kwargs) -> dict:
        # ids and names typed on the command line go into paths quoted (``segment``); as a second line, one
        # that would make the request another one (a query, a fragment, a step up) is refused here
        if "?" in path or "#" in path or any(part in (".", "..") for part in path.split("/")):
            raise TemperingError(f"{path!r} is not a valid API path: an id or name in it holds '?', '#' or a "
                                 "'.'/'..' segment", param="path")
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.http.base_url}: {exc}") from exc
        if response.status_code == 204:
            return {}
        if response.is_success:
            return response.json()
        try:
            error = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            error = {"message": response.text[:500] or response.reason_phrase}
        raise ServerError(f"server answered {response.status_code}: {error.get('message')}",
                          code=error.get("code") or "server_error", param=error.get("param"))

    def upload(self, path: Path, purpose: str = "fine-tune") -> dict:
        with path.open("rb") as fh:
            return self._call("POST", "/files", files={"file": (path.name, fh)}, data={"purpose": purpose})

    def create_job(self, body: dict) -> dict:
        return self._call("POST", "/fine_tuning/jobs", json=body)

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/fine_tuning/jobs/{segment(job_id)}")

    def events_since(self, job_id: str, seen: set[str]) -> list[dict]:
        """Events not seen yet, oldest first (the API pages newest first)."""
        fresh, after = [], None
        while True:
            params = {"limit": 100, **({"after": after} if after else {})}
            page = self._call("GET", f"/fine_tuning/jobs/{segment(job_id)}/events", params=params)
            new = [e for e in page["data"] if e["id"] not in seen]
            fresh += new
            if not page["has_more"] or len(new) < len(page["data"]):
                break
            after = page["data"][-1]["id"]
        seen.update(e["id"] for e in fresh)
        return list(reversed(fresh))

    def follow(self, job_id: str, poll_seconds: float = 1.0) -> Iterator[dict]:
        """Yield the job's events as they arrive; ends when the job does."""
        seen: set[str] = set()
        while True:
            yield from self.events_since(job_id, seen)
            job = self.job(job_id)
            if job["status"] in TERMINAL:
                yield from self.events_since(job_id, seen)
                return
            time.sleep(poll_seconds)

    # -- sweeps (``tempering sweep`` / ``sweeps``) ------------------------------------------------------------

    def create_sweep(self, body: dict) -> dict:
        return self._call("POST", "/fine_tuning/sweeps", json=body)

    def sweep(self, sweep_id: str) -> dict:
        return self._call("GET", f"/fine_tuning/sweeps/{segment(sweep_id)}")

    def sweeps(self) -> list[dict]:
        return self._call("GET", "/fine_tuning/sweeps", params={"limit": 100})["data"]

    def cancel_sweep(self, sweep_id: str) -> dict:
        return self._call("POST", f"/fine_tuning/sweeps/{segment(sweep_id)}/cancel")

    def models(self) -> list[dict]:
        return self._call("GET", "/models")["data"]

    def create_evaluation(self, body: dict) -> dict:
        return self._call("POST", "/evaluations", json=body)

    def evaluation(self, evaluation_id: str) -> dict:
        return self._call("GET", f"/evaluations/{segment(evaluation_id)}")

    def evaluate(self, data: Path, body: dict, poll_seconds: float = 1.0, on_created=None,
                 train_data: Path | None = None) -> dict:
        """``tempering eval`` on the server: upload ``data`` (and ``train_data``, purpose ``evals``), create the
        evaluation from ``body`` (``model``, ``compare_model``, options; the file ids are filled in) and wait
        for it to end. Returns the evaluation object; its ``report`` once succeeded, its ``error`` once failed."""
        body = {**body, "data_file": self.upload(data, purpose="evals")["id"]}
        if train_data is not None:
            body["train_file"] = self.upload(train_data, purpose="evals")["id"]
        evaluation = self.create_evaluation(body)
        if on_created is not None:
            on_created(evaluation)
        while evaluation["status"] not in TERMINAL:
            time.sleep(poll_seconds)
            evaluation = self.evaluation(evaluation["id"])
        return evaluation

    # -- deployments and chat (``tempering deploy`` / ``deployments`` / ``chat --server``) --------------------

    def create_deployment(self, body: dict) -> dict:
        return self._call("POST", "/deployments", json=body)

    def deployments(self) -> list[dict]:
        return self._call("GET", "/deployments")["data"]

    def deployment(self, ident: str) -> dict:
        return self._call("GET", f"/deployments/{segment(ident)}")

    def delete_deployment(self, ident: str) -> dict:
        return self._call("DELETE", f"/deployments/{segment(ident)}")

    def deployment_metrics(self, ident: str) -> dict:
        return self._call("GET", f"/deployments/{segment(ident)}/metrics")

    def set_content_filter(self, ident: str, body: dict) -> dict:
        """``POST /v1/deployments/{id}/content_filter``: on (the server's default policy, or ``body``'s own),
        or off."""
        return self._call("POST", f"/deployments/{segment(ident)}/content_filter", json=body)

    def chat_stream(self, body: dict) -> Iterator[str]:
        """The text pieces of a streamed chat completion (``tempering chat --server``)."""
        import json

        try:
            with self.http.stream("POST", "/chat/completions", json={**body, "stream": True}) as response:
                if not response.is_success:
                    response.read()
                    try:
                        error = response.json()["error"]
                    except (ValueError, KeyError, TypeError):
                        error = {"message": response.text[:500]}
                    raise ServerError(f"server answered {response.status_code}: {error.get('message')}",
                                      code=error.get("code") or "server_error", param=error.get("param"))
                for line in response.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise ServerError(f"the server failed mid-answer: {event['error'].get('message')}")
                    for choice in event.get("choices") or []:
                        if choice["delta"].get("content"):
                            yield choice["delta"]["content"]
        except httpx.HTTPError as exc:
            raise ServerError(f"cannot reach the server at {self.http.base_url}: {exc}") from exc

    # -- people and access (the Administration API) --

    def me(self) -> dict:
        return self._call("GET", "/me")

    def project_id(self, project: str | None) -> str:
        """The project named (an id), else the key's own."""
        return project or self.me()["project_id"]

    def organization(self, method: str, path: str, body: dict | None = None, **params) -> dict:
        """A call under ``/v1/organization``; ``params`` with a value become the query string."""
        query = {k: v for k, v in params.items() if v is not None}
        return self._call(method, f"/organization{path}", json=body, params=query or None)

    # -- usage and costs (``tempering usage``) ----------------------------------------------------------------

    def buckets(self, path: str, params: dict) -> list[dict]:
        """Every bucket of ``/organization/usage/…`` or ``/organization/costs`` from ``params``, page after
        page."""
        found, page = [], None
        while True:
            answer = self._call("GET", f"/organization/{path}", params={**params, **({"page": page} if page else {})})
            found += answer["data"]
            page = answer.get("next_page")
            if not answer.get("has_more") or not page:
                return found
