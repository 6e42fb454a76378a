"""Validation of chat JSONL: a malformed-file corpus with one bad line per error code."""

from __future__ import annotations

import json

import pytest
from conftest import chat_example, write_jsonl

from tempering.data import validate_file
from tempering.data.lines import FILE_ERROR_CODES, MAX_LINE_BYTES
from tempering.data.validate import ERROR_CODES, WARNING_CODES, load_chat_file
from tempering.errors import InvalidDataError

SYS = {"role": "system", "content": "s"}
USER = {"role": "user", "content": "hi"}
ASSISTANT = {"role": "assistant", "content": "hello"}


def _line(obj) -> bytes:
    return json.dumps(obj).encode("utf-8")


# (raw line, error codes expected on that line); each line below line 1 is one kind of mistake.
CORPUS: list[tuple[bytes, set[str]]] = [
    (_line({"messages": [SYS, USER, ASSISTANT]}), set()),
    (b'{"messages": [', {"invalid_json"}),
    (b"[1, 2, 3]", {"not_object"}),
    (_line({"prompt": "hi", "completion": "hello"}), {"missing_messages", "unknown_key"}),
    (_line({"messages": "hello"}), {"messages_not_list"}),
    (_line({"messages": []}), {"messages_not_list"}),
    (_line({"messages": [SYS, "hi", ASSISTANT]}), {"message_not_object"}),
    (_line({"messages": [SYS, {"content": "hi"}, ASSISTANT]}), {"missing_role"}),
    (_line({"messages": [SYS, {"role": "bot", "content": "hi"}, ASSISTANT]}), {"unknown_role"}),
    (_line({"messages": [SYS, USER, {**ASSISTANT, "tone": "warm"}]}), {"unknown_key"}),
    (_line({"messages": [SYS, {"role": "user"}, ASSISTANT]}), {"missing_content"}),
    (_line({"messages": [SYS, {"role": "user", "content": 42}, ASSISTANT]}), {"content_not_string"}),
    (_line({"messages": [SYS, {"role": "user", "content": "  \n"}, ASSISTANT]}), {"empty_content"}),
    (_line({"messages": [SYS, USER]}), {"no_assistant_message"}),
    (_line({"messages": [SYS, USER, {**ASSISTANT, "weight": 0}]}), {"no_trained_message"}),
    (_line({"messages": [SYS, USER, {**ASSISTANT, "weight": 0.5}]}), {"invalid_weight"}),
    (_line({"messages": [SYS, {**USER, "weight": 1}, ASSISTANT]}), {"invalid_weight"}),
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', {"not_utf8"}),
    (_line({"messages": [SYS, USER, {"role": "assistant", "content": "word " * 400}]}), {"too_long"}),
    (_line({"messages": [SYS, USER, {**ASSISTANT, "weight": 1}, USER, {**ASSISTANT, "weight": 0}]}), set()),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {"too_deep"}),
    (b'{"messages": [], "messages": []}', {"duplicate_key"}),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', {"invalid_unicode"}),
    (b'{"messages": [{"role": "user", "content": "' + b"x" * (MAX_LINE_BYTES + 1) + b'"}]}', {"line_too_long"}),
    (b'{"messages": [], "n": ' + b"9" * 5000 + b"}", {"invalid_json"}),
]


def _write(tmp_path, lines: list[bytes], name="corpus.jsonl", ending=b"\n"):
    path = tmp_path / name
    path.write_bytes(ending.join(lines) + ending)
    return path


def test_corpus_reports_every_problem_with_its_line(tmp_path, tokenizer):
    path = _write(tmp_path, [raw for raw, _ in CORPUS])
    report = validate_file(path, tokenizer=tokenizer, context_length=256)
    by_line: dict[int, set[str]] = {}
    for issue in report.errors:
        by_line.setdefault(issue.line, set()).add(issue.code)
    for number, (_, expected) in enumerate(CORPUS, start=1):
        assert by_line.get(number, set()) == expected, f"line {number}"
    assert not report.valid
    assert report.stats["valid_examples"] == 2
    # every error code a line can carry is exercised by the corpus
    line_codes = set(ERROR_CODES) - {"empty_file", "too_few_examples"} - set(FILE_ERROR_CODES)
    assert set().union(*by_line.values()) == line_codes


def test_file_level_errors(tmp_path):
    empty = _write(tmp_path, [], name="empty.jsonl", ending=b"")
    report = validate_file(empty)
    assert [(i.line, i.code) for i in report.errors] == [(None, "empty_file")]

    few = write_jsonl(tmp_path / "few.jsonl", [chat_example(f"q{i}", f"a{i}") for i in range(3)])
    report = validate_file(few)
    assert [(i.line, i.code) for i in report.errors] == [(None, "too_few_examples")]
    assert "at least 10" in report.errors[0].message


def test_warnings_do_not_block(tmp_path):
    rows = [chat_example(f"q{i}", f"a{i}") for i in range(10)]
    rows.append(rows[3])
    rows.append(chat_example("no system", "fine", system=False))
    path = write_jsonl(tmp_path / "w.jsonl", rows)
    text = path.read_text().splitlines()
    path.write_text("\n".join(text[:5] + [""] + text[5:]) + "\n")
    report = validate_file(path)
    assert report.valid
    codes = {(i.line, i.code) for i in report.warnings}
    assert codes == {(6, "blank_line"), (12, "duplicate_example"), (13, "no_system_message")}
    assert "line 4" in next(i.message for i in report.warnings if i.code == "duplicate_example")
    assert set(WARNING_CODES) == {c for _, c in codes}


@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
def test_bom_crlf_and_missing_final_newline_are_fine(tmp_path, ending):
    lines = [_line(chat_example(f"q{i}", f"a{i}")) for i in range(10)]
    path = tmp_path / "ok.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ending.join(lines))  # BOM, no final newline
    report = validate_file(path)
    assert report.valid, report.errors
    assert report.stats["examples"] == 10


def test_token_stats_use_the_chat_template(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "t.jsonl", [chat_example(f"q{i}", "yes") for i in range(10)])
    report = validate_file(path, tokenizer=tokenizer, context_length=4096)
    tokens = report.stats["tokens_per_example"]
    assert tokens["min"] == tokens["max"] > 10  # template markers are counted, not just the words
    assert report.stats["trained_tokens_per_example"]["max"] == 2  # "yes" + end-of-turn marker


def test_load_raises_with_the_whole_report(tmp_path):
    path = _write(tmp_path, [raw for raw, _ in CORPUS[:4]])
    with pytest.raises(InvalidDataError) as info:
        load_chat_file(path)
    assert "line 2" in info.value.message and "invalid_json" in info.value.message
    assert {i.code for i in info.value.report.errors} >= {"invalid_json", "not_object", "too_few_examples"}
