"""Importers: every common shape of fine-tuning data in, canonical chat examples out.

Owns the formats (``chat``, ``prompt-completion``, ``text`` with a Phi-3 or ChatML template written out,
``instruction`` (Alpaca), ``classification`` CSV or JSONL), telling them apart, and converting each line
into ``{"messages": [...]}``. Like ``data.validate``, it reads every line, keeps going past bad ones, and
reports each problem with its 1-based line number and a stable code (``FORMAT_ERROR_CODES`` plus the
structural codes of ``data.validate``). CRLF or LF, a UTF-8 BOM and a missing final newline are all fine.
Knows nothing about tokenizers, model weights, training or HTTP.

Modules: ``records`` (names, codes, ``Example``, the reports), ``detect``, ``jsonl`` (conversations),
``templates`` (Phi-3/ChatML text), ``classification`` (CSV and JSONL rows), ``reading`` (whole files,
``validate_any``), ``writing``. Import from here; the modules are the layout, not the interface.
"""

from tempering.data.formats.detect import LABEL_COLUMNS, TEXT_COLUMNS, detect_format
from tempering.data.formats.reading import file_facts, load_examples, read_examples, validate_any
from tempering.data.formats.records import (
    FORMAT_ERROR_CODES,
    FORMAT_WARNING_CODES,
    FORMATS,
    ConversionReport,
    Example,
    Format,
)
from tempering.data.formats.templates import parse_template
from tempering.data.formats.writing import OutputFormat, example_record, write_jsonl

__all__ = [
    "FORMATS",
    "FORMAT_ERROR_CODES",
    "FORMAT_WARNING_CODES",
    "LABEL_COLUMNS",
    "TEXT_COLUMNS",
    "ConversionReport",
    "Example",
    "Format",
    "OutputFormat",
    "detect_format",
    "example_record",
    "file_facts",
    "load_examples",
    "parse_template",
    "read_examples",
    "validate_any",
    "write_jsonl",
]
