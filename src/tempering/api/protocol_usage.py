"""Wire models of usage and costs, in the shapes of OpenAI's Usage and Costs APIs: a page of time buckets,
each holding results (``organization.usage.completions.result``, ``organization.costs.result``, and
Tempering's own ``organization.usage.fine_tuning.result`` and ``organization.usage.hosting.result``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class UsageBucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int = Field(description="The bucket's start, Unix seconds (inclusive).")
    end_time: int = Field(description="The bucket's end, Unix seconds (exclusive).")
    results: list[dict[str, Any]] = Field(description="One result per group (group_by); none without usage.")


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    next_page: str | None = Field(description="Pass as `page` for the next buckets; null on the last page.")
