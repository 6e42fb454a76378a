"""Reading an upload's multipart body as it arrives, the file part pushed straight into the artifact store.

FastAPI's own form parsing spools every file part to the system temp folder before the route (and its key
check) runs; this reader runs after the key check (``api.limits``) and after the declared length was held
against the limit, and writes the file part only to a temp file under the store (``ArtifactStore.open_upload``)
with the limit applied as bytes arrive. Fields other than ``file`` and ``purpose`` are read and dropped; part
headers and the ``purpose`` value are capped, so no part of the body is held whole in memory. Whatever fails,
nothing is left on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from tempering.api.errors import APIError
from tempering.services import files
from tempering.store.artifacts import UploadWriter

MAX_PART_HEADERS = 16 * 1024  # bytes of headers per part
MAX_FIELD = 1024  # bytes of the purpose field
OVERHEAD = 64 * 1024  # multipart framing and the small fields, beyond the file's own bytes

# The request body as the OpenAPI schema shows it (the route reads the body itself, so FastAPI cannot infer it).
UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "title": "Upload", "required": ["file", "purpose"],
        "properties": {
            "file": {"type": "string", "format": "binary", "contentMediaType": "application/octet-stream",
                     "title": "File", "description": "The data file (JSONL, CSV or TSV)"},
            "purpose": {"type": "string", "title": "Purpose", "description": "'fine-tune' or 'evals'"},
        }}}},
}


@dataclass
class Received:
    upload: files.Upload
    size: int
    sha256: str


def _bad(message: str, param: str = "file") -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def check_declared_length(request: Request, limit: int) -> None:
    """413 from the headers alone: a body declared larger than the limit (plus framing) is never read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + OVERHEAD:
        raise APIError(413, f"the upload is larger than the {limit:,}-byte limit", param="file",
                       code="file_too_large")


class _Form:
    """The parser's callbacks: one part at a time, the file part into ``open_file()``'s writer."""

    def __init__(self, open_file):
        self.open_file = open_file
        self.writer: UploadWriter | None = None
        self.filename: str | None = None
        self.purpose: bytearray | None = None
        self.ended = False
        self._headers: list[tuple[bytearray, bytearray]] = []
        self._header_bytes = 0
        self._target = None  # where the current part's data goes: "file", "purpose" or None (dropped)

    def callbacks(self) -> dict:
        return {"on_part_begin": self._part_begin, "on_header_field": self._field, "on_header_value": self._value,
                "on_header_begin": self._header_begin, "on_headers_finished": self._headers_finished,
                "on_part_data": self._data, "on_end": self._end}

    def _part_begin(self) -> None:
        self._headers, self._header_bytes, self._target = [], 0, None

    def _header_begin(self) -> None:
        self._headers.append((bytearray(), bytearray()))

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADERS:
            raise _bad(f"a part's headers are longer than {MAX_PART_HEADERS:,} bytes")

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._headers[-1][0].extend(data[start:end])

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._headers[-1][1].extend(data[start:end])

    def _headers_finished(self) -> None:
        headers = {bytes(k).strip().lower(): bytes(v).strip() for k, v in self._headers}
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise _bad("every part needs 'Content-Disposition: form-data; name=…'")
        name = options[b"name"]
        if name == b"file":
            if self.writer is not None:
                raise _bad("more than one 'file' part")
            raw = options.get(b"filename")
            try:
                filename = raw.decode("utf-8") if raw is not None else None
            except UnicodeDecodeError:
                raise _bad("the file name is not UTF-8") from None
            self.filename = files.check_filename(filename)
            self.writer = self.open_file()
            self._target = "file"
        elif name == b"purpose":
            if self.purpose is not None:
                raise _bad("more than one 'purpose' field", "purpose")
            self.purpose = bytearray()
            self._target = "purpose"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._target == "file":
            self.writer.write(data[start:end])
        elif self._target == "purpose":
            self.purpose.extend(data[start:end])
            if len(self.purpose) > MAX_FIELD:
                raise _bad(f"purpose is longer than {MAX_FIELD} bytes", "purpose")

    def _end(self) -> None:
        self.ended = True


async def receive_upload(request: Request, store, file_id: str, limit: int) -> Received:
    """Stream the body into the store under ``file_id``; 400 naming the field for a malformed or incomplete
    form, 413 past the limit. On any failure, nothing is kept."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise _bad("send the file as multipart/form-data (fields 'file' and 'purpose')")
    form = _Form(lambda: store.open_upload(file_id, limit))
    try:
        parser = MultipartParser(options[b"boundary"], form.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit + OVERHEAD:  # a body sent chunked, or longer than it declared
                raise APIError(413, f"the upload is larger than the {limit:,}-byte limit", param="file",
                               code="file_too_large")
            parser.write(chunk)
        parser.finalize()
        if not form.ended:
            raise _bad("the multipart body ended before its closing boundary")
        if form.writer is None:
            raise _bad("the 'file' part is missing")
        if form.purpose is None:
            raise _bad("the 'purpose' field is missing", "purpose")
        try:
            purpose = files.check_purpose(form.purpose.decode("utf-8"))
        except UnicodeDecodeError:
            raise _bad("purpose is not UTF-8", "purpose") from None
        # off the event loop: with a shared artifact store, committing uploads the file (multipart)
        size, sha256 = await run_in_threadpool(form.writer.commit)
        return Received(files.Upload(form.filename, purpose), size, sha256)
    except MultipartParseError as exc:
        raise _bad(f"the multipart body is malformed: {str(exc)[:200]}") from None
    except ClientDisconnect:
        raise APIError(400, "the client went away during the upload", param="file", code="incomplete") from None
    finally:
        if form.writer is not None:
            form.writer.abort()  # does nothing once committed
