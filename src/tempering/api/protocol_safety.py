"""Wire models of content safety: OpenAI's ``/v1/moderations`` and Azure AI Content Safety's text
blocklists. Pure pydantic, like ``api.protocol``; imports no torch and no classifier."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_INPUTS = 256


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["image_url"]


class ModerationCreate(BaseModel):
    input: str | list[str] | list[TextPart | ImagePart] = Field(
        description="A text, a list of texts (one result each), or a list of content parts (one result for "
        "all of them; image parts are refused: Tempering classifies text only).")
    model: str | None = Field(default=None, max_length=200, description="tempering-safety-v1; OpenAI's names "
                              "(omni-moderation-latest, text-moderation-latest, …) are accepted as aliases.")


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


# Azure AI Content Safety "text/blocklists" (REST API 2024-09-01), camelCase as on the wire. Stored text has
# no NUL characters (PostgreSQL refuses them); item ids are the UUIDs this server made.
NO_NUL = r"^[^\x00]*$"
ItemId = Annotated[str, Field(pattern=r"^[0-9a-f-]{36}$")]


class TextBlocklistPatch(BaseModel):
    description: str = Field(default="", max_length=1024, pattern=NO_NUL)


class TextBlocklist(BaseModel):
    blocklistName: str
    description: str = ""


class TextBlocklistItemIn(BaseModel):
    description: str = Field(default="", max_length=1024, pattern=NO_NUL)
    text: str = Field(min_length=1, max_length=500, pattern=NO_NUL, description="An exact term (matched case-insensitively on "
                      "word boundaries) or, with isRegex, a regular expression (validated, time-bounded).")
    isRegex: bool = False


class TextBlocklistItem(TextBlocklistItemIn):
    blocklistItemId: str


class AddOrUpdateBlocklistItems(BaseModel):
    blocklistItems: list[TextBlocklistItemIn] = Field(min_length=1, max_length=100)


class AddOrUpdateBlocklistItemsResult(BaseModel):
    blocklistItems: list[TextBlocklistItem]


class RemoveBlocklistItems(BaseModel):
    blocklistItemIds: list[ItemId] = Field(min_length=1, max_length=100)


class TextBlocklistPage(BaseModel):
    value: list[TextBlocklist]


class TextBlocklistItemPage(BaseModel):
    value: list[TextBlocklistItem]


class SafetyCategory(BaseModel):
    """A category the content filter can check: built in, or custom (trained on this server)."""

    object: Literal["contentsafety.category"] = "contentsafety.category"
    name: str
    kind: Literal["built-in", "custom"]
    description: str = ""
    valid_average_precision: float | None = Field(default=None, description="On the held-out validation split.")
    training_rows: int | None = None


class SafetyCategoryPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[SafetyCategory]


class SafetyCategoryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=40, description="Lower-case letters, digits and '_', starting with "
                      "a letter; the name policies use.")
    training_file: str = Field(min_length=1, max_length=64, description='A file of the project: JSON Lines of '
                               '{"text": "…", "label": 0 or 1}.')
