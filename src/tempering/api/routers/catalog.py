"""``/v1/catalog``: Tempering's model catalog (not OpenAI's ``/v1/models``, which lists what can be called):
every card with its facts and whether its weights are on this server. Parse, call ``services.catalog``,
render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import ListPage
from tempering.api.protocol_tools import CatalogModel
from tempering.services import catalog

router = APIRouter(prefix="/v1/catalog", tags=["catalog"], responses=ERROR_RESPONSES)


def to_wire(entry: catalog.CatalogEntry) -> CatalogModel:
    card = entry.card
    return CatalogModel(id=card.id, name=card.name, family=card.family, parameters=card.parameters,
                        context_length=card.context_length, license=card.license, fine_tunable=card.fine_tunable,
                        source=card.source, hf_repo=card.hf_repo, description=card.description,
                        weights=entry.weights, get_weights=entry.get_weights)


@router.get("", response_model=ListPage[CatalogModel])
def list_catalog(caller: CallerDep, search: Annotated[str | None, Query(
        max_length=200, description="Only cards whose id, name, family, licence, description or repository "
        "contain every word.")] = None) -> ListPage[CatalogModel]:
    return ListPage[CatalogModel](data=[to_wire(e) for e in catalog.search(search)])


@router.get("/{model_id}", response_model=CatalogModel)
def get_catalog_model(model_id: str, caller: CallerDep) -> CatalogModel:
    return to_wire(catalog.details(model_id))
