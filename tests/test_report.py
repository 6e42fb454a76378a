"""The quality report: duplicates, leakage, labels, diversity, suspicious content, verdict, with lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.data.findings import content_flags, infer_labels, normalize
from tempering.data.formats import Example
from tempering.data.report import build_report, report_files

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def ex(line: int, question: str, answer: str, label: str | None = None, system: str | None = None) -> Example:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
    ]
    return Example(line=line, messages=messages, label=label)


def qa(n: int, start: int = 1) -> list[Example]:
    return [
        ex(start + i, f"Question number {i} about topic {i * 7}?", f"A distinct answer {i} with detail.")
        for i in range(n)
    ]


def codes(report) -> dict[str, object]:
    return {f.code: f for f in report.findings}


def test_clean_data_is_ready_and_counts_tokens(tokenizer):
    train = qa(12)
    validation = [ex(100 + i, f"A new question {i}?", f"A new answer {i}.") for i in range(3)]
    report = build_report(train, validation, tokenizer=tokenizer, context_length=8192)
    assert report.counts.examples == 12 and report.counts.validation_examples == 3
    assert report.counts.messages_by_role == {"user": 12, "assistant": 12}
    tokens = report.counts.tokens_per_example
    assert tokens.min <= tokens.median <= tokens.p95 <= tokens.max and tokens.total > 0
    assert 0 < report.counts.trained_tokens_per_example.max < tokens.min
    assert report.counts.tokens_by_role["user"] > 0 and report.counts.tokens_by_role["assistant"] > 0
    assert report.verdict.status == "ready" and report.verdict.advice == []
    small = build_report(train, tokenizer=tokenizer, context_length=20)
    assert small.counts.over_context == [e.line for e in train]
    assert codes(small)["too_long"].level == "error" and small.verdict.status == "blocked"
    json.loads(report.model_dump_json())  # the API and portal read this JSON


def test_exact_and_near_duplicates_within_training_carry_their_lines():
    train = qa(10) + [
        ex(11, "Question number 2 about topic 14?", "A distinct answer 2 with detail."),
        ex(12, "question NUMBER 3 about topic 21", "A distinct answer 3, with detail"),
        ex(13, "Question number 4 about topic 28?", "Something else entirely."),
    ]
    report = build_report(train)
    d = report.duplicates
    assert [g.lines for g in d.exact] == [[3, 11]] and d.exact_extra == 1
    assert [g.lines for g in d.near] == [[4, 12]] and d.near_extra == 1
    assert [g.lines for g in d.repeated_prompts] == [[5, 13]]
    found = codes(report)
    assert found["exact_duplicate"].lines == [11]
    assert found["near_duplicate"].lines == [4, 12]
    assert found["repeated_prompt"].lines == [5, 13]
    assert any("Remove 2 duplicate" in a for a in report.verdict.advice)


def test_leakage_across_training_and_validation():
    train = qa(10)
    validation = [
        ex(1, "Question number 1 about topic 7?", "A distinct answer 1 with detail."),  # exact
        ex(2, "QUESTION number 2 about topic 14", "a distinct answer 2 with detail"),  # near
        ex(3, "Question number 3 about topic 21?", "A different answer."),  # same prompt
        ex(4, "Something new?", "New."),
    ]
    report = build_report(train, validation)
    d = report.duplicates
    assert [(g.lines, g.validation_lines) for g in d.leaked_exact] == [([2], [1])]
    assert [(g.lines, g.validation_lines) for g in d.leaked_near] == [([3], [2])]
    assert [(g.lines, g.validation_lines) for g in d.leaked_prompts] == [([4], [3])]
    found = codes(report)
    assert found["leak_exact"].validation_lines == [1] and found["leak_prompt"].lines == [4]
    assert report.verdict.status == "review"


def test_labels_imbalance_rare_and_unsplittable_classes():
    train = [ex(i + 1, f"text {i}", "x", label="big") for i in range(40)]
    train += [ex(41 + i, f"other {i}", "x", label="small") for i in range(3)]
    train += [ex(44, "lonely", "x", label="single")]
    report = build_report(train, [ex(1, "v", "x", label="big"), ex(2, "w", "x", label="ghost")])
    labels = report.labels
    assert labels.source == "column" and labels.counts == {"big": 40, "small": 3, "single": 1}
    assert labels.imbalance_ratio == 40 and labels.rare_classes == ["small", "single"]
    assert labels.unsplittable_classes == ["single"]
    assert labels.missing_from_validation == ["small", "single"] and labels.unseen_in_training == ["ghost"]
    found = codes(report)
    assert found["rare_classes"].lines == [41, 42, 43, 44] and found["unsplittable_classes"].lines == [44]
    assert "label_imbalance" in found
    assert any("2 class(es) have fewer than 5" in a for a in report.verdict.advice)


def test_short_repeating_answers_are_inferred_as_labels():
    messages = [
        [{"role": "user", "content": f"t{i}"}, {"role": "assistant", "content": "yes" if i % 3 else "no"}]
        for i in range(12)
    ]
    assert infer_labels(messages) == [m[1]["content"] for m in messages]
    long = [
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": f"a long answer number {i}"}]
        for i in range(12)
    ]
    assert infer_labels(long) is None
    report = build_report([Example(line=i + 1, messages=m) for i, m in enumerate(messages)])
    assert report.labels.source == "assistant_answers" and report.labels.counts == {"yes": 8, "no": 4}


def test_diversity_and_dominant_answer():
    train = [
        ex(i + 1, f"Tell me fact {i}", "I cannot help with that, sorry about it.", system=f"S{i % 2}")
        for i in range(8)
    ] + [
        ex(9, "What now", "Something useful here for you."),
        ex(10, "Why so", "Another useful and longer answer here."),
    ]
    report = build_report(train)
    dv = report.diversity
    assert dv.distinct_system_prompts == 2 and dv.distinct_prompts == 10
    assert dv.top_user_opening == "tell me fact" and dv.top_user_opening_share == 0.8
    assert dv.top_assistant_answer_share == 0.8 and dv.distinct_assistant_answers == 3
    assert codes(report)["dominant_answer"].lines == list(range(1, 9))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Plain text, nothing odd.", set()),
        ("cafÃ© and donâ€™t", {"mojibake"}),
        ("Tromsø, café, naïve, 東京", set()),
        ("lost \ufffd byte", {"replacement_character"}),
        ("don\\u2019t", {"escaped_unicode"}),
        ("bell\x07 and zero\u200bwidth", {"control_characters"}),
        ("a must-visit,t don't", {"missing_space"}),
        ("write to jane.doe@example.com", {"pii_email"}),
        ("call +1 415-555-0132 now", {"pii_phone"}),
        ("card 4111 1111 1111 1111", {"pii_card"}),
        ("order 1234 5678 9012 3456", set()),  # fails the Luhn check
        ("in 2020-01-01 we had 10000 users", set()),
    ],
)
def test_suspicious_content_flags(text, expected):
    assert content_flags(text) == expected


def test_suspicious_content_is_a_warning_with_lines():
    train = qa(10) + [ex(11, "mail me at a@b.org", "ok"), ex(12, "fine", "cafÃ©")]
    report = build_report(train)
    found = codes(report)
    assert found["pii_email"].lines == [11] and found["pii_email"].level == "warning"
    assert found["mojibake"].lines == [12]
    assert report.verdict.status == "review"


def test_normalize():
    assert normalize("  Héllo,   WORLD!! ") == "héllo world"
    assert normalize("ﬁne") == "fine"  # compatibility ligature folded


def test_conversion_problems_and_file_layout_become_findings(tmp_path):
    path = tmp_path / "pc.jsonl"
    rows = [json.dumps({"prompt": f"q{i}", "completion": f"answer {i}"}) for i in range(11)] + [
        '{"prompt": "x"}'
    ]
    path.write_bytes("\r\n".join(rows).encode())
    report = report_files(path)
    found = codes(report)
    assert found["missing_field"].lines == [12] and found["missing_field"].level == "error"
    assert "CRLF" in found["file_layout"].message and "no final newline" in found["file_layout"].message
    assert report.verdict.status == "blocked" and "--skip-invalid" in report.verdict.advice[0]


def test_cli_report_json_and_tables(tmp_path, tiny_model):
    train = tmp_path / "t.jsonl"
    rows = [{"prompt": f"Question {i}?", "completion": f"Answer {i}."} for i in range(12)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows + rows[:2]), encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "report", str(train), "--validation", str(train), "--model", tiny_model, "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["duplicates"]["exact_extra"] == 2 and data["verdict"]["status"] == "review"
    assert data["counts"]["tokens_per_example"]["max"] > 0
    bins = data["counts"]["tokens_per_example"]["histogram"]
    assert sum(b["count"] for b in bins) == 14 and bins[0]["low"] == data["counts"]["tokens_per_example"]["min"]
    table = runner.invoke(app, ["data", "report", str(train), "--model", tiny_model])
    assert table.exit_code == 0 and "exact_duplicate" in table.output and "review" in table.output
    assert "Tokens per example" in table.output and "█" in table.output


@pytest.mark.skipif(not (SHARED / "phi3-cookbook").exists(), reason="../shared/data is absent")
def test_real_files_report():
    travel = report_files(SHARED / "phi3-cookbook" / "travel_prompt_response.jsonl")
    assert travel.duplicates.exact_extra == 13 and travel.diversity.distinct_prompts == 190
    assert "missing_space" in codes(travel) and "file_layout" in codes(travel)
    truthful = report_files(
        SHARED / "phi3-cookbook" / "truthfulqa_text_train.jsonl",
        SHARED / "phi3-cookbook" / "truthfulqa_text_valid.jsonl",
    )
    d = truthful.duplicates
    assert not (d.leaked_exact or d.leaked_near or d.leaked_prompts)  # SOURCE.md: no question in both


def test_histogram_bins_cover_every_value():
    from tempering.data.findings.finding import histogram

    whole = histogram([1, 2, 3, 4, 5, 100], 12)
    assert sum(b.count for b in whole) == 6 and whole[0].count == 5 and whole[-1].count == 1
    assert all(b.high - b.low == 9 for b in whole) and whole[-1].low <= 100 < whole[-1].high
    assert histogram([7, 7, 7], 12) == [type(whole[0])(low=7, high=7, count=3)]
    fractional = histogram([1.5, 2.5, 9.0], 4)
    assert [b.count for b in fractional] == [2, 0, 0, 1] and fractional[-1].high == 9.0
