"""Tempering's own data routes (not OpenAI's): a file's quality report, conversion and split, and the estimate
of a job before it is created. Parse, call ``services.datasets``, render."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from sqlalchemy.orm import Session

from tempering.api.errors import ERROR_RESPONSES
from tempering.api.permissions import CallerDep
from tempering.api.protocol import FileObject
from tempering.api.protocol_tools import (
    ConversionObject,
    ConvertRequest,
    DataIssue,
    DataReportObject,
    EstimateObject,
    EstimateRequest,
    ReportRequest,
    SplitObject,
    SplitRequest,
)
from tempering.services import datasets

router = APIRouter(tags=["data"], responses=ERROR_RESPONSES)
SHOWN_ISSUES = 100


def read_session(request: Request):
    """A read-only unit of work for a POST that writes nothing: it never takes SQLite's write lock, so the
    seconds of reading and tokenizing a file block no writer."""
    with request.app.state.db.session(write=False) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(read_session, scope="function")]


def file_wire(row) -> FileObject:
    return FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                      purpose=row.purpose, status=row.status, status_details=row.status_details)


def _options(body) -> dict:
    return {"format": body.format, "text_column": body.text_column, "label_column": body.label_column}


def _issues(conversion) -> list[DataIssue]:
    issues = [DataIssue(level="error", **i.model_dump()) for i in conversion.errors]
    issues += [DataIssue(level="warning", **i.model_dump()) for i in conversion.warnings]
    return issues[:SHOWN_ISSUES]


@router.post("/v1/files/{file_id}/report", response_model=DataReportObject)
def report(file_id: str, body: ReportRequest, request: Request, caller: CallerDep,
           session: ReadSessionDep) -> DataReportObject:
    """The quality report of `tempering data report`: counts and tokens, duplicates and leakage, labels,
    diversity, suspicious content, the verdict and advice. Any file of the project holding data, valid or not."""
    result = datasets.report(session, caller.project_id, request.app.state.store, file_id,
                             validation_file_id=body.validation_file, model=body.model, **_options(body))
    return DataReportObject(**result.model_dump())


@router.post("/v1/files/{file_id}/convert", response_model=ConversionObject)
def convert(file_id: str, body: ConvertRequest, request: Request, caller: CallerDep) -> ConversionObject:
    """Any supported format to canonical chat JSONL (or classification rows), stored as a new file."""
    state = request.app.state
    done = datasets.convert(state.db, caller.project_id, state.store, file_id, to=body.to,
                            skip_invalid=body.skip_invalid, **_options(body))
    return ConversionObject(source_file=done.source.id, format=done.conversion.format,
                            examples=done.conversion.stats.get("examples", 0), skipped=done.skipped,
                            issues=_issues(done.conversion), file=file_wire(done.file))


@router.post("/v1/files/{file_id}/split", response_model=SplitObject)
def split(file_id: str, body: SplitRequest, request: Request, caller: CallerDep) -> SplitObject:
    """A seeded split into two new files, stratified by label, examples sharing a prompt on one side."""
    state = request.app.state
    done = datasets.split(state.db, caller.project_id, state.store, file_id, to=body.to, seed=body.seed,
                          validation_fraction=body.validation_fraction, skip_invalid=body.skip_invalid,
                          **_options(body))
    r = done.result
    return SplitObject(source_file=done.source.id, format=done.conversion.format, skipped=done.skipped,
                       validation_fraction=r.validation_fraction, seed=r.seed, stratified=r.stratified,
                       by_label=r.model_dump()["by_label"], duplicate_groups=r.duplicate_groups, notes=r.notes,
                       training_file=file_wire(done.train), validation_file=file_wire(done.validation))


@router.post("/v1/fine_tuning/estimates", response_model=EstimateObject)
def estimate(body: EstimateRequest, request: Request, caller: CallerDep, session: ReadSessionDep) -> EstimateObject:
    """Trained tokens, time and cost of the job this body would create (the body of
    `POST /v1/fine_tuning/jobs`); nothing is created."""
    from tempering.services import jobs

    result = jobs.estimate(session, caller.project_id, request.app.state.store, body.config_fields(),
                           training_file=body.training_file, validation_file=body.validation_file)
    return EstimateObject(**result.model_dump())
