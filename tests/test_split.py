"""The split: a partition, deterministic, duplicates on one side, stratified by label (property tests)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tempering.cli.main import app
from tempering.data.findings import prompt_key
from tempering.data.split import split_examples
from tempering.errors import InvalidConfigError

BANKING = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "banking77" / "train.csv"


def chat(prompt: str, answer: str = "ok") -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


# Prompts drawn from a small pool, so duplicates (and same-prompt-other-answer pairs) are common;
# a variant in case and punctuation makes near duplicates.
datasets = st.lists(
    st.tuples(
        st.integers(0, 30), st.booleans(), st.sampled_from(["a", "b", "c", "d", "e"]), st.integers(0, 2)
    ),
    min_size=1,
    max_size=80,
).map(
    lambda rows: (
        [chat(f"Prompt {p}?" if v else f"prompt {p}", f"answer {a}") for p, v, _, a in rows],
        [label for _, _, label, _ in rows],
    )
)
fractions = st.floats(0.05, 0.5)
seeds = st.integers(0, 2**31 - 1)


def sides(result) -> dict[int, str]:
    return {
        **{i: "train" for i in result.train_indices},
        **{i: "validation" for i in result.validation_indices},
    }


@settings(max_examples=150, deadline=None)
@given(datasets, fractions, seeds, st.booleans())
def test_split_is_a_deterministic_partition_that_keeps_duplicates_together(data, fraction, seed, use_labels):
    examples, labels = data
    labels = labels if use_labels else None
    result = split_examples(examples, labels, fraction, seed)
    assert sorted(result.train_indices + result.validation_indices) == list(range(len(examples)))
    assert not set(result.train_indices) & set(result.validation_indices)
    assert result.train_indices == sorted(result.train_indices)
    assert result == split_examples(examples, labels, fraction, seed)
    where = sides(result)
    by_prompt = defaultdict(set)
    for i, messages in enumerate(examples):
        by_prompt[prompt_key(messages)].add(where[i])
    assert all(len(s) == 1 for s in by_prompt.values())  # never on both sides
    if result.train_indices or result.validation_indices:
        assert result.train_indices  # training always keeps something


@settings(max_examples=150, deadline=None)
@given(datasets, fractions, seeds)
def test_every_class_that_can_be_split_gets_a_validation_example(data, fraction, seed):
    examples, labels = data
    result = split_examples(examples, labels, fraction, seed)
    prompts_per_class = defaultdict(set)
    for messages, label in zip(examples, labels):
        prompts_per_class[label].add(prompt_key(messages))
    group_label = {}
    for messages, label in zip(examples, labels):  # a shared prompt goes with its majority class
        group_label.setdefault(prompt_key(messages), Counter())[label] += 1
    groups_per_class = Counter(c.most_common(1)[0][0] for c in group_label.values())
    for label, n_groups in groups_per_class.items():
        if n_groups >= 2:
            assert result.by_label[label].validation >= 1, label
            assert result.by_label[label].train >= 1, label
    assert sum(v.train + v.validation for v in result.by_label.values()) == len(examples)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.integers(1, 60), min_size=1), fractions, seeds)
def test_distinct_examples_split_each_class_by_the_fraction(sizes, fraction, seed):
    examples, labels = [], []
    for label, n in sizes.items():
        examples += [chat(f"{label} text {i}") for i in range(n)]
        labels += [label] * n
    result = split_examples(examples, labels, fraction, seed)
    for label, n in sizes.items():
        expected = max(1, round(fraction * n)) if n >= 2 else 0
        assert result.by_label[label].validation == expected
    assert [n for n in result.notes if "single example" in n] == [
        f"class {label!r} has a single example: kept in training only"
        for label in sorted(sizes)
        if sizes[label] == 1
    ]


def test_seed_changes_the_split_and_apply_follows_the_indices():
    examples = [chat(f"question {i}") for i in range(50)]
    a, b = split_examples(examples, None, 0.2, 1), split_examples(examples, None, 0.2, 2)
    assert len(a.validation_indices) == 10 and a.validation_indices != b.validation_indices
    train, valid = a.apply(examples)
    assert valid == [examples[i] for i in a.validation_indices] and len(train) == 40
    assert a.stratified is False and a.by_label is None


def test_bad_arguments_are_domain_errors():
    with pytest.raises(InvalidConfigError, match="validation_fraction"):
        split_examples([chat("x")], None, 1.0, 0)
    with pytest.raises(InvalidConfigError, match="labels"):
        split_examples([chat("x")], ["a", "b"], 0.1, 0)


def test_cli_split_writes_both_sides_and_what_went_where(tmp_path):
    src = tmp_path / "intents.csv"
    rows = [f"text {label} {i},{label}" for label, n in (("a", 30), ("b", 10), ("c", 1)) for i in range(n)]
    src.write_text("text,label\n" + "\n".join(rows + ["text a 0,a"]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "data",
            "split",
            str(src),
            "--validation-fraction",
            "0.2",
            "--seed",
            "3",
            "--out-dir",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["by_label"] == {
        "a": {"train": 25, "validation": 6},
        "b": {"train": 8, "validation": 2},
        "c": {"train": 1, "validation": 0},
    }
    assert manifest["duplicate_groups"] == 1
    assert sorted(manifest["train_lines"] + manifest["validation_lines"]) == list(range(2, 44))
    assert (2 in manifest["train_lines"]) == (43 in manifest["train_lines"])  # the duplicate stays together
    assert json.loads((out / "intents.split.json").read_text()) == manifest
    valid = [json.loads(line) for line in (out / "intents.validation.jsonl").read_text().splitlines()]
    assert len(valid) == 8 and all(set(v) == {"messages"} for v in valid)
    rows_out = CliRunner().invoke(
        app, ["data", "split", str(src), "--out-dir", str(out), "--to", "classification"]
    )
    assert rows_out.exit_code == 0, rows_out.output
    assert set(json.loads((out / "intents.train.jsonl").read_text().splitlines()[0])) == {"text", "label"}


@pytest.mark.skipif(not BANKING.exists(), reason="../shared/data is absent")
def test_banking77_split_is_stratified():
    from tempering.data.formats import load_examples

    messages, labels, _ = load_examples(BANKING, skip_invalid=True)
    result = split_examples(messages, labels, 0.1, 0)
    assert len(result.by_label) == 77
    for label, counts in result.by_label.items():
        share = counts.validation / (counts.train + counts.validation)
        assert counts.validation >= 1 and abs(share - 0.1) < 0.03, label
