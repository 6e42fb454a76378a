"""Importers: every format with good and bad lines, detection, line endings, and the real sample files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.data.formats import (
    FORMAT_ERROR_CODES,
    detect_format,
    load_examples,
    parse_template,
    read_examples,
    validate_any,
    write_jsonl,
)
from tempering.data.validate import ERROR_CODES
from tempering.errors import InvalidConfigError, InvalidDataError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRAVEL = SHARED / "phi3-cookbook" / "travel_prompt_response.jsonl"
TRUTHFUL_TRAIN = SHARED / "phi3-cookbook" / "truthfulqa_text_train.jsonl"
TRUTHFUL_VALID = SHARED / "phi3-cookbook" / "truthfulqa_text_valid.jsonl"
BANKING = SHARED / "banking77" / "train.csv"


def _write(path: Path, lines: list, ending: bytes = b"\n", final: bool = True, bom: bool = False) -> Path:
    raw = [line if isinstance(line, bytes) else json.dumps(line).encode() for line in lines]
    data = ending.join(raw) + (ending if final else b"")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def _codes(report) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for issue in report.errors:
        found.setdefault(issue.line, set()).add(issue.code)
    return found


PHI3 = "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there <|end|>\n<|assistant|> \nHello! <|end|>"
CHATML = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n"
)
EXPECTED = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
]

# format → (good lines, [(bad line, codes expected on it)])
CASES = {
    "prompt-completion": (
        [
            {"prompt": "Hi there", "completion": "Hello!", "system": "Be brief."},
            {"prompt": "Hi there", "response": "Hello!"},
        ],
        [
            ({"prompt": "Hi"}, {"missing_field"}),
            ({"prompt": 3, "completion": "x"}, {"field_not_string"}),
            ({"prompt": " ", "completion": "x"}, {"empty_field"}),
            (b"{oops", {"invalid_json"}),
        ],
    ),
    "text": (
        [
            {"text": PHI3},
            {"text": CHATML},
            {"text": "<s><|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>"},
        ],
        [
            ({"text": "just some prose"}, {"no_template"}),
            ({"text": "preface <|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>"}, {"text_outside_turns"}),
            ({"text": "<|im_start|>tool\nx<|im_end|><|im_start|>assistant\ny<|im_end|>"}, {"unknown_role"}),
            ({"text": "<|user|>\nHi<|end|>"}, {"no_assistant_message"}),
            ({"text": "<|user|>\nHi<|end|>\n<|assistant|>\n <|end|>"}, {"empty_content"}),
        ],
    ),
    "instruction": (
        [
            {"instruction": "Hi there", "input": "", "output": "Hello!"},
            {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        ],
        [
            ({"instruction": "x"}, {"missing_field"}),
            ({"instruction": "x", "output": ["y"]}, {"field_not_string"}),
            ([1, 2], {"not_object"}),
        ],
    ),
    "classification": (
        [{"text": "where is my card", "label": "card_arrival"}, {"text": "fees?", "label": 7}],
        [
            ({"text": "", "label": "a"}, {"empty_field"}),
            ({"text": "x"}, {"missing_field"}),
            ({"text": "x", "label": ""}, {"empty_field"}),
        ],
    ),
    "chat": (
        [{"messages": EXPECTED}],
        [
            ({"messages": [{"role": "user", "content": "hi"}]}, {"no_assistant_message"}),
            ({"messages": [{"role": "bot", "content": "hi"}, EXPECTED[2]]}, {"unknown_role"}),
        ],
    ),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_each_format_converts_good_lines_and_reports_bad_ones_by_line(tmp_path, fmt):
    good, bad = CASES[fmt]
    path = _write(tmp_path / f"{fmt}.jsonl", good + [line for line, _ in bad])
    examples, report = read_examples(path, fmt)
    assert report.format == fmt
    assert [e.line for e in examples] == list(range(1, len(good) + 1))
    assert _codes(report) == {len(good) + i + 1: codes for i, (_, codes) in enumerate(bad)}
    known = set(ERROR_CODES) | set(FORMAT_ERROR_CODES)
    assert {i.code for i in report.errors} <= known
    assert not report.valid and report.stats["examples"] == len(good) + len(bad)
    with pytest.raises(InvalidDataError) as caught:
        load_examples(path, fmt)
    assert caught.value.report.errors == report.errors
    messages, labels, _ = load_examples(path, fmt, skip_invalid=True)
    assert len(messages) == len(good)
    assert (labels is not None) == (fmt == "classification")


def test_conversions_produce_the_canonical_messages(tmp_path):
    expected_pc = [EXPECTED, EXPECTED[1:]]
    examples, _ = read_examples(_write(tmp_path / "pc.jsonl", CASES["prompt-completion"][0]))
    assert [e.messages for e in examples] == expected_pc
    assert parse_template(PHI3) == EXPECTED and parse_template(CHATML) == EXPECTED
    examples, _ = read_examples(_write(tmp_path / "alpaca.jsonl", CASES["instruction"][0]))
    assert examples[1].messages[0] == {"role": "user", "content": "Translate\n\nbonjour"}
    examples, report = read_examples(_write(tmp_path / "cls.jsonl", CASES["classification"][0]))
    assert [e.label for e in examples] == ["card_arrival", "7"]
    assert examples[0].messages == [
        {"role": "user", "content": "where is my card"},
        {"role": "assistant", "content": "card_arrival"},
    ]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"messages": EXPECTED}], "chat"),
        ([{"prompt": "a", "response": "b"}], "prompt-completion"),
        ([{"text": PHI3}], "text"),
        ([{"instruction": "a", "input": "", "output": "b"}], "instruction"),
        ([{"sentence": "a", "intent": "b"}], "classification"),
    ],
)
def test_format_is_detected_from_the_keys(tmp_path, rows, expected):
    assert detect_format(_write(tmp_path / "x.jsonl", rows * 3)) == expected


def test_detection_failure_and_unknown_format_are_clear(tmp_path):
    path = _write(tmp_path / "x.jsonl", [{"foo": 1}])
    examples, report = read_examples(path)  # reported, not raised: every line still gets its reason
    assert not examples and report.format == "chat"
    assert [(i.line, i.code) for i in report.errors][:2] == [(None, "unknown_format"), (1, "missing_messages")]
    assert "--format" in report.errors[0].message
    with pytest.raises(InvalidDataError, match="--format"):
        load_examples(path)
    with pytest.raises(InvalidDataError, match="--format"):
        detect_format(path)
    with pytest.raises(InvalidConfigError, match="unknown format 'yaml'"):
        read_examples(path, "yaml")


def test_format_override_wins_over_detection(tmp_path):
    # {"text", "label"} is detected as classification; forced to text, the template is parsed instead.
    path = _write(tmp_path / "x.jsonl", [{"text": PHI3, "label": "greeting"}])
    assert read_examples(path)[1].format == "classification"
    examples, report = read_examples(path, "text")
    assert examples[0].messages == EXPECTED
    assert [w.code for w in report.warnings] == ["ignored_key"]


@pytest.mark.parametrize(
    ("ending", "final", "bom"),
    [(b"\n", True, False), (b"\r\n", True, True), (b"\r\n", False, False), (b"\n", False, True)],
)
def test_line_endings_bom_and_final_newline(tmp_path, ending, final, bom):
    rows = [{"prompt": f"q{i}", "completion": f"a{i}"} for i in range(3)]
    examples, report = read_examples(_write(tmp_path / "x.jsonl", rows, ending, final, bom))
    assert report.valid and [e.messages[1]["content"] for e in examples] == ["a0", "a1", "a2"]
    assert report.stats["line_endings"] == ("CRLF" if ending == b"\r\n" else "LF")
    assert report.stats["bom"] is bom and report.stats["final_newline"] is final


def test_csv_columns_detected_or_given_and_bad_rows_reported(tmp_path):
    csv_path = tmp_path / "intents.csv"
    csv_path.write_bytes(
        '\ufefftext,category\r\nwhere is my card?,card_arrival\r\n"fees, again",fees\r\n'
        "broken row\r\n\r\n,fees\r\ncaf\xe9 ok,other\r\n".encode("utf-8")
        + b"bad \xff byte,fees"
    )
    examples, report = read_examples(csv_path)
    assert report.format == "classification"
    assert (report.stats["text_column"], report.stats["label_column"]) == ("text", "category")
    assert [(e.line, e.messages[0]["content"], e.label) for e in examples] == [
        (2, "where is my card?", "card_arrival"),
        (3, "fees, again", "fees"),
        (7, "café ok", "other"),
    ]
    assert _codes(report) == {4: {"wrong_column_count"}, 6: {"empty_field"}, 8: {"not_utf8"}}
    assert [w.line for w in report.warnings] == [5]

    renamed = tmp_path / "renamed.csv"
    renamed.write_text("utt,cat\nhello,greet\n", encoding="utf-8")
    examples, report = read_examples(renamed)
    assert not examples and [(i.line, i.code) for i in report.errors] == [(None, "missing_column")]
    assert "--text-column" in report.errors[0].message and str(tmp_path) not in report.errors[0].message
    examples, _ = read_examples(renamed, text_column="utt", label_column="cat")
    assert examples[0].label == "greet"
    with pytest.raises(InvalidDataError, match="no column 'nope'"):
        load_examples(renamed, text_column="nope", label_column="cat")


def test_multiline_quoted_csv_rows_keep_their_starting_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('text,label\n"line one\nline two",a\nnext,b\n', encoding="utf-8")
    examples, report = read_examples(path)
    assert report.valid and [(e.line, e.label) for e in examples] == [(2, "a"), (4, "b")]


def test_write_jsonl_chat_and_classification_round_trip(tmp_path):
    examples, _ = read_examples(_write(tmp_path / "cls.jsonl", CASES["classification"][0]))
    chat = write_jsonl(examples, tmp_path / "out" / "chat.jsonl")
    assert detect_format(chat) == "chat" and read_examples(chat)[1].valid
    rows = write_jsonl(examples, tmp_path / "out" / "rows.jsonl", "classification")
    again, report = read_examples(rows)
    assert report.format == "classification" and [e.label for e in again] == ["card_arrival", "7"]
    assert chat.read_bytes().endswith(b"\n") and b"\r" not in chat.read_bytes()


def test_validate_any_keeps_original_line_numbers(tmp_path, tokenizer):
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}"} for i in range(12)]
    rows[3] = {"prompt": "no answer"}
    rows[7] = rows[5]
    path = _write(tmp_path / "pc.jsonl", rows)
    report = validate_any(path, tokenizer=tokenizer, context_length=8192)
    assert not report.valid
    assert [(i.line, i.code) for i in report.errors] == [(4, "missing_field")]
    assert [(w.line, w.message) for w in report.warnings if w.code == "duplicate_example"] == [
        (8, "same example as line 6")
    ]
    assert report.stats["examples"] == 12 and report.stats["tokens_per_example"]["max"] > 0
    assert report.stats["format"] == "prompt-completion"


def test_cli_convert_and_validate_any_format(tmp_path, tiny_model):
    runner = CliRunner()
    src = _write(
        tmp_path / "pc.jsonl",
        [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(10)] + [{"prompt": "broken"}],
        ending=b"\r\n",
    )
    out = tmp_path / "chat.jsonl"
    refused = runner.invoke(app, ["data", "convert", str(src), str(out)])
    assert refused.exit_code == 1 and "missing_field" in refused.output and not out.exists()
    done = runner.invoke(app, ["data", "convert", str(src), str(out), "--skip-invalid"])
    assert done.exit_code == 0, done.output
    assert len(out.read_text().splitlines()) == 10
    valid = runner.invoke(app, ["data", "validate", str(out), "--model", tiny_model, "--json"])
    assert valid.exit_code == 0, valid.output
    raw = runner.invoke(app, ["data", "validate", str(src), "--model", tiny_model, "--json"])
    assert raw.exit_code == 1
    assert [(e["line"], e["code"]) for e in json.loads(raw.stdout)["errors"]] == [(11, "missing_field")]


# ---------------------------------------------------------------- the real sample files (skipped when absent)

needs_shared = pytest.mark.skipif(
    not BANKING.exists() or not TRAVEL.exists(), reason="../shared/data is absent"
)


@needs_shared
def test_real_files_convert():
    travel, report = read_examples(TRAVEL)
    assert report.format == "prompt-completion" and report.valid and len(travel) == 289
    assert report.stats["line_endings"] == "CRLF" and not report.stats["final_newline"]
    for path in (TRUTHFUL_TRAIN, TRUTHFUL_VALID):
        examples, report = read_examples(path)
        assert report.format == "text" and report.valid
        assert all([m["role"] for m in e.messages] == ["user", "assistant"] for e in examples)
    banking, report = read_examples(BANKING)
    assert report.format == "classification" and len({e.label for e in banking}) == 77
    # The file holds three records broken over several lines; each is reported where it starts.
    assert {(i.line, i.code) for i in report.errors} >= {(1293, "wrong_column_count"), (1296, "empty_field")}
    assert len(banking) == report.stats["examples"] - len(report.errors)
