"""A corpus of bad inputs through every door that reads data: ``validate_any``, ``read_examples``, the
CLI's ``tempering data validate|report|split --json`` and the API's upload check.

Whatever a file holds, no reader raises: every problem is an issue with a code and a line (or ``null`` for
the whole file), ``--json`` prints exactly one JSON object, and an invalid file exits 1. The files are
generated here (a 9 MiB line does not belong in git); ``CORPUS`` maps a name to its bytes and the error
codes it must report (None: the file is valid, its oddity handled).
"""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.data.formats import (
    FORMAT_ERROR_CODES,
    FORMAT_WARNING_CODES,
    FORMATS,
    read_examples,
    validate_any,
)
from tempering.data.lines import FILE_ERROR_CODES, MAX_DEPTH, MAX_LINE_BYTES
from tempering.data.validate import AGGREGATE_AFTER, ERROR_CODES, SHOWN_LINES, WARNING_CODES

KNOWN_CODES = set(ERROR_CODES) | set(FORMAT_ERROR_CODES) | set(WARNING_CODES) | set(FORMAT_WARNING_CODES)
FILE_CODES = set(FILE_ERROR_CODES) | {
    "empty_file",
    "too_few_examples",
    "unknown_format",
    "missing_column",
    "duplicate_column",
    "invalid_csv",  # the header line
}


def _chat(user: str = "hi", answer: str = "hello", **extra) -> dict:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": user},
        {"role": "assistant", "content": answer, **extra},
    ]
    return {"messages": messages}


def _line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


GOOD = b"".join(_line(_chat(f"question {i}", f"answer {i}")) for i in range(12))


def _csv(rows: list[bytes], header: bytes = b"text,label") -> bytes:
    return b"\n".join([header, *rows]) + b"\n"


CSV_ROWS = [b"where is my card %d,card_arrival" % i for i in range(12)]

# name → (bytes, or a function making them; error codes the file must report, or None when it is valid)
CORPUS: dict[str, tuple[bytes | Callable[[], bytes], set[str] | None]] = {
    # encodings
    "utf16_bom.jsonl": (lambda: GOOD.decode().encode("utf-16"), {"unsupported_encoding"}),
    "utf16be_bom.jsonl": (lambda: b"\xfe\xff" + GOOD.decode().encode("utf-16-be"), {"unsupported_encoding"}),
    "utf32_bom.jsonl": (lambda: GOOD.decode().encode("utf-32"), {"unsupported_encoding"}),
    "utf16_no_bom.jsonl": (lambda: GOOD.decode().encode("utf-16-le"), {"binary_file"}),
    "latin1.jsonl": (
        GOOD + '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"),
        {"not_utf8"},
    ),
    "invalid_utf8.jsonl": (GOOD + b'{"messages": "\xc3\x28"}\n', {"not_utf8"}),
    "utf8_bom_crlf.jsonl": (lambda: b"\xef\xbb\xbf" + GOOD.replace(b"\n", b"\r\n"), None),
    "utf8_bom_only.jsonl": (b"\xef\xbb\xbf", {"empty_file"}),
    # binary
    "binary.jsonl": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, {"binary_file"}),
    "nul_after_sniff.jsonl": (lambda: GOOD * 6 + b'{"messages": [\x00]}\n', {"invalid_json"}),
    # nesting
    "deep_array.jsonl": (lambda: GOOD + b"[" * 200_000 + b"]" * 200_000 + b"\n", {"too_deep"}),
    "deep_object.jsonl": (lambda: GOOD + b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n", {"too_deep"}),
    "deep_content.jsonl": (
        lambda: GOOD + _line(_chat(json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)))),
        {"too_deep"},
    ),
    "unclosed_deep.jsonl": (lambda: GOOD + b'{"messages": ' + b"[{" * 50_000 + b"\n", {"too_deep"}),
    "brackets_in_text.jsonl": (lambda: GOOD + _line(_chat("[{" * 100, "}]" * 100)), None),
    # size
    "huge_line.jsonl": (
        lambda: (
            GOOD + b'{"messages": [{"role": "user", "content": "' + b"x" * MAX_LINE_BYTES + b'"}]}\n' + GOOD
        ),
        {"line_too_long"},
    ),
    "huge_csv_line.csv": (
        lambda: _csv(CSV_ROWS + [b"y" * (MAX_LINE_BYTES + 10) + b",big"]),
        {"line_too_long"},
    ),
    "huge_csv_field.csv": (lambda: _csv(CSV_ROWS + [b'"' + b"z" * 200_000 + b'",big']), {"invalid_csv"}),
    "many_keys.jsonl": (
        lambda: GOOD + _line({**{f"k{i}": i for i in range(20_000)}, "messages": []}),
        {"unknown_key"},
    ),
    # JSON that Python accepts and other readers do not
    "huge_integer.jsonl": (GOOD + b'{"messages": [], "n": ' + b"7" * 5000 + b"}\n", {"invalid_json"}),
    "nan_weight.jsonl": (
        GOOD + _line(_chat()).replace(b'"hello"', b'"hello", "weight": NaN'),
        {"invalid_json"},
    ),
    "duplicate_key.jsonl": (
        GOOD + b'{"messages": [], "messages": [{"role": "user", "content": "x"}]}\n',
        {"duplicate_key"},
    ),
    "lone_surrogate.jsonl": (
        GOOD + _line(_chat("\\ud800")).replace(b"\\\\ud800", b"\\ud800"),
        {"invalid_unicode"},
    ),
    # empty and truncated
    "empty.jsonl": (b"", {"empty_file"}),
    "blank_lines.jsonl": (b"\n\r\n   \n", {"empty_file"}),
    "truncated_last_line.jsonl": (GOOD + _line(_chat())[:25], {"invalid_json"}),
    "no_final_newline.jsonl": (GOOD.rstrip(b"\n"), None),
    "prose.jsonl": (b"this is not data\n" * 12, {"unknown_format", "invalid_json"}),
    "json_array.json": (lambda: json.dumps([_chat()] * 12, indent=1).encode(), {"unknown_format"}),
    # conflicting fields, wrong types, out-of-range values
    "conflicting_fields.jsonl": (
        b'{"prompt": "a", "completion": "b", "response": "c"}\n' * 12,
        {"conflicting_fields"},
    ),
    "wrong_types.jsonl": (
        GOOD
        + _line({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]})
        + _line({"messages": [{"role": ["user"], "content": "x"}, {"role": "assistant", "content": "y"}]})
        + _line({"messages": {"role": "user"}}),
        {"content_not_string", "unknown_role", "messages_not_list"},
    ),
    "out_of_range_weight.jsonl": (
        GOOD + _line(_chat(weight=2)) + _line(_chat(weight=-1)),
        {"invalid_weight"},
    ),
    "prompt_not_string.jsonl": (b'{"prompt": ["a"], "completion": "b"}\n' * 12, {"field_not_string"}),
    # CSV
    "csv_doubled_quotes.csv": (
        _csv(
            [b'"fees, again",fees'] + CSV_ROWS * 2 + [b'"Order says ""Pending, not shipped"" still",status']
        ),
        None,
    ),
    "csv_missing_column.csv": (_csv(CSV_ROWS, b"foo,bar"), {"missing_column"}),
    "csv_duplicate_column.csv": (_csv(CSV_ROWS, b"text,label,label"), {"duplicate_column"}),
    "csv_wrong_column_count.csv": (_csv(CSV_ROWS + [b"a,b,c"]), {"wrong_column_count"}),
    "csv_latin1.csv": (_csv(CSV_ROWS + ["café,food".encode("latin-1")]), {"not_utf8"}),
    "csv_unclosed_quote.csv": (_csv(CSV_ROWS + [b'"never closed,label']), {"wrong_column_count"}),
    "csv_header_only.csv": (b"text,label\n", {"empty_file"}),
    "csv_cr_line_endings.csv": (_csv(CSV_ROWS + [b'"spans\rtwo lines",x']).replace(b"\n", b"\r"), None),
    "csv_header_quoted_newline.csv": (b'text,"label\r\nx",y\n' + b"a,b,c\n" * 12, {"missing_column"}),
    "csv_header_too_long.csv": (lambda: b"t" * 200_000 + b",label\n" + b"a,b\n" * 12, {"invalid_csv"}),
    "jsonl_cr_line_endings.jsonl": (GOOD.replace(b"\n", b"\r"), {"invalid_json"}),
    "semicolon.csv": (_csv([r.replace(b",", b";") for r in CSV_ROWS], b"text;label"), None),
    "tabs.tsv": (_csv([r.replace(b",", b"\t") for r in CSV_ROWS], b"text\tlabel"), None),
}


def _write(tmp_path: Path, name: str) -> Path:
    content, _ = CORPUS[name]
    path = tmp_path / name
    path.write_bytes(content() if callable(content) else content)
    return path


def _assert_issues_are_located(issues: list[dict]) -> None:
    for issue in issues:
        assert issue["code"] in KNOWN_CODES, issue
        line = issue["line"]
        assert (isinstance(line, int) and line >= 1) or (line is None and issue["code"] in FILE_CODES), issue
        assert issue["message"] and len(issue["message"]) < 2000, issue["code"]


def test_corpus_is_large_and_covers_every_new_code():
    assert len(CORPUS) >= 25
    expected = set().union(*(codes for _, codes in CORPUS.values() if codes))
    assert set(FILE_ERROR_CODES) <= expected
    assert {"too_deep", "line_too_long", "duplicate_key", "invalid_unicode", "not_utf8"} <= expected


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_validate_any_reports_never_raises(tmp_path, name):
    path = _write(tmp_path, name)
    report = validate_any(path)
    dumped = report.model_dump(mode="json")
    _assert_issues_are_located(dumped["errors"] + dumped["warnings"])
    expected = CORPUS[name][1]
    if expected is None:
        assert report.valid, dumped["errors"]
    else:
        assert not report.valid and expected <= {i.code for i in report.errors}, dumped["errors"]
    examples, conversion = read_examples(path)  # the report, split and convert read through here
    _assert_issues_are_located(conversion.model_dump(mode="json")["errors"])
    assert conversion.valid == (expected is None) or not examples


@pytest.fixture
def cli_tokenizer(monkeypatch, tokenizer):
    """The default model's card with the session's tokenizer: the CLI's own path, without loading a
    tokenizer per invocation (what is tested is what the command prints, not the tokenizer loading)."""
    from tempering import catalog

    monkeypatch.setattr(catalog, "load_tokenizer", lambda card: tokenizer)
    return catalog.DEFAULT_MODEL_ID


def _json_out(result) -> dict:
    assert "Traceback" not in result.output, result.output
    payload = json.loads(result.stdout)  # exactly one JSON value: trailing text would fail here
    assert isinstance(payload, dict)
    return payload


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_cli_validate_json_is_one_object_and_exit_code(tmp_path, cli_tokenizer, name):
    path = _write(tmp_path, name)
    result = CliRunner().invoke(app, ["data", "validate", str(path), "--model", cli_tokenizer, "--json"])
    payload = _json_out(result)
    expected = CORPUS[name][1]
    assert result.exit_code == (0 if expected is None else 1), result.output
    _assert_issues_are_located(payload["errors"] + payload["warnings"])
    assert payload["valid"] is (expected is None)
    if expected is not None:
        assert expected <= {i["code"] for i in payload["errors"]}
    table = CliRunner().invoke(app, ["data", "validate", str(path), "--model", cli_tokenizer])
    assert table.exit_code == result.exit_code and "Traceback" not in table.output
    assert ("invalid" if expected else "valid") in table.output


@pytest.mark.parametrize(
    "name",
    ["deep_array.jsonl", "empty.jsonl", "utf16_bom.jsonl", "csv_missing_column.csv", "huge_line.jsonl"],
)
def test_cli_report_and_split_json_are_one_object(tmp_path, cli_tokenizer, name):
    path = _write(tmp_path, name)
    report = CliRunner().invoke(app, ["data", "report", str(path), "--model", cli_tokenizer, "--json"])
    assert report.exit_code == 0 and _json_out(report)["verdict"]["status"] == "blocked"
    split = CliRunner().invoke(
        app, ["data", "split", str(path), "--out-dir", str(tmp_path / "out"), "--json"]
    )
    payload = _json_out(split)
    assert split.exit_code == 1 and payload["error"]["code"] == "invalid_data"
    _assert_issues_are_located(payload["report"]["errors"])


def test_cli_json_errors_outside_the_data_are_json_too(tmp_path, cli_tokenizer):
    runner = CliRunner()
    missing = runner.invoke(app, ["data", "validate", str(tmp_path / "nope.jsonl"), "--json"])
    assert missing.exit_code == 1 and _json_out(missing)["error"]["code"] == "file_not_found"
    path = _write(tmp_path, "csv_doubled_quotes.csv")
    unknown = runner.invoke(app, ["data", "validate", str(path), "--model", "no-such-model", "--json"])
    assert unknown.exit_code == 1 and _json_out(unknown)["error"]["code"] == "model_not_found"
    bad_format = runner.invoke(
        app, ["data", "report", str(path), "--format", "yaml", "--json"]
    )  # default model
    assert bad_format.exit_code == 1 and _json_out(bad_format)["error"]["param"] == "format"


# ---------------------------------------------------------------- one regression test per hole


def test_upload_check_reports_deep_nesting_instead_of_crashing(tmp_path):
    """Hole 4: a deeply nested line raised RecursionError out of the upload check (a 500)."""
    from tempering.services.datasets import check_file

    path = _write(tmp_path, "deep_array.jsonl")
    status, details = check_file(path, "train.jsonl")
    assert status == "error" and "line 13" in details and "too_deep" in details


def test_csv_is_read_as_rfc4180_not_a_sniffed_dialect(tmp_path):
    """Hole 8: doubled quotes after the sniffed sample were rejected as wrong_column_count."""
    examples, report = read_examples(_write(tmp_path, "csv_doubled_quotes.csv"))
    assert report.valid, report.errors
    assert examples[-1].messages[0]["content"] == 'Order says "Pending, not shipped" still'


def test_a_warning_on_every_line_is_one_warning_with_a_count(tmp_path):
    """Hole 8: a 770-row classification CSV got 770 copies of no_system_message, burying 3 errors."""
    rows = [b"where is my card %d,card_arrival" % i for i in range(770)]
    for bad in (100, 400, 700):
        rows[bad] = b"only one field"
    report = validate_any(_write_bytes(tmp_path / "770.csv", _csv(rows)))
    assert [(i.line, i.code) for i in report.errors] == [
        (102, "wrong_column_count"),
        (402, "wrong_column_count"),
        (702, "wrong_column_count"),
    ]
    (warning,) = report.warnings
    assert warning.code == "no_system_message" and warning.count == 767
    assert warning.line == 2 and warning.lines == list(range(2, 2 + SHOWN_LINES))
    assert "767 lines" in warning.message
    few = validate_any(
        _write_bytes(
            tmp_path / "few.jsonl",
            b"".join(_line({"messages": _chat()["messages"][1:]}) for _ in range(AGGREGATE_AFTER)),
        )
    )
    assert [w.code for w in few.warnings].count("no_system_message") == AGGREGATE_AFTER  # few stay per line
    assert all("count" not in w for w in few.model_dump(mode="json")["warnings"])


def test_invalid_utf8_names_the_line_and_byte_offset(tmp_path):
    report = validate_any(_write(tmp_path, "latin1.jsonl"))
    (error,) = report.errors
    offset = '{"messages": [{"role": "user", "content": "caf'.__len__()
    assert error.line == 13 and f"byte {offset} of the line (0xe9)" in error.message


def test_a_50_mb_line_is_never_held_whole(tmp_path):
    path = tmp_path / "fifty.jsonl"
    with path.open("wb") as fh:
        fh.write(GOOD + b'{"messages": [{"role": "user", "content": "')
        for _ in range(50):
            fh.write(b"x" * (1 << 20))
        fh.write(b'"}]}\n' + GOOD)
    tracemalloc.start()
    try:
        report = validate_any(path)
        _, conversion = read_examples(path, "chat")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(i.line, i.code) for i in report.errors] == [(13, "line_too_long")]
    assert report.stats["examples"] == 25 and conversion.stats["converted"] == 24
    assert peak < 3 * MAX_LINE_BYTES, f"peak {peak:,} bytes"


# ---------------------------------------------------------------- seeded mutations of good files

SEEDS = {
    "chat.jsonl": GOOD,
    "pc.jsonl": b"".join(_line({"prompt": f"q{i}", "completion": f"a{i}", "system": "s"}) for i in range(12)),
    "text.jsonl": b"".join(
        _line({"text": f"<|user|>\nq{i}<|end|>\n<|assistant|>\na{i}<|end|>"}) for i in range(12)
    ),
    "alpaca.jsonl": b"".join(
        _line({"instruction": f"q{i}", "input": "x", "output": f"a{i}"}) for i in range(12)
    ),
    "rows.csv": _csv([b'"hello, ""there"" %d",label%d' % (i, i % 3) for i in range(12)]),
    "escaped": b"".join(_line(_chat("\u00e9\ud83d\ude00 [x] {y}")) for _ in range(12)),
}
PIECES = [
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"\\",
    b"\\ud800",
    b",",
    b"\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xef\xbb\xbf",
    b"NaN",
    b"9" * 30,
    b'"messages"',
    b'"weight"',
    b"\t",
    b'""',
]


def _mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        at, op = rng.randint(0, len(out)), rng.random()
        if op < 0.4:
            out[at:at] = rng.choice(PIECES) * rng.choice([1, 1, 2, 70])
        elif op < 0.6:
            del out[at : at + rng.randint(1, 20)]
        elif op < 0.8 and out:
            out[at % len(out)] = rng.randrange(256)
        else:
            start = rng.randint(0, len(out))
            out[at:at] = out[start : start + rng.randint(1, 80)]
    return bytes(out)


def test_seeded_mutations_never_make_a_reader_raise(tmp_path):
    """Random damage to good files of every format, read detected and as each format: always a report."""
    from tempering.data.report import report_files

    rng = random.Random(20261202)
    for n in range(150):
        name, seed = rng.choice(sorted(SEEDS.items()))
        path = _write_bytes(tmp_path / f"{n}-{name}", _mutate(seed, rng))
        reports = [validate_any(path), read_examples(path)[1], validate_any(path, rng.choice(FORMATS))]
        for report in reports:
            _assert_issues_are_located(report.model_dump(mode="json")["errors"])
        assert report_files(path).verdict.status in ("ready", "review", "blocked")


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
