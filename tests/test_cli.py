"""The ``tempering`` commands as a user types them (Typer's runner, tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tempering.cli.main import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_models_list_json_and_search():
    result = run("models", "list", "--json")
    assert result.exit_code == 0, result.output
    ids = {m["id"] for m in json.loads(result.stdout)}
    assert ids >= {"smollm2-135m-instruct", "phi-3-mini-4k-instruct", "phi-3-mini-128k-instruct",
                   "phi-3.5-mini-instruct", "phi-3-medium-4k-instruct"}
    found = json.loads(run("models", "list", "--search", "phi 3.5", "--json").stdout)
    assert [m["id"] for m in found] == ["phi-3.5-mini-instruct"]
    card = found[0]
    assert card["fine_tunable"] and card["family"] == "phi3" and card["context_length"] == 131072
    assert card["status"] == "not downloaded"


def test_missing_phi3_weights_say_what_to_download():
    result = run("models", "prepare", "phi-3-mini-4k-instruct")
    assert result.exit_code == 1
    assert "hf download microsoft/Phi-3-mini-4k-instruct" in result.output
    assert "tempering models add-path phi-3-mini-4k-instruct" in result.output


def test_add_path_refuses_pickle_only_folders(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    result = run("models", "add-path", "phi-3-mini-4k-instruct", tmp_path)
    assert result.exit_code == 1
    assert "pickle weights are never loaded" in result.output


def test_add_path_registers_a_custom_model(tiny_model_dir):
    result = run("models", "add-path", "my-tiny", tiny_model_dir)
    assert result.exit_code == 0, result.output
    card = next(m for m in json.loads(run("models", "list", "--json").stdout) if m["id"] == "my-tiny")
    assert card["family"] == "llama" and card["status"] == "ready" and card["parameters"] > 0


def test_data_validate_exit_codes_and_json(tmp_path, qa_file, tiny_model):
    ok = run("data", "validate", qa_file, "--model", tiny_model, "--json")
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.stdout)
    assert report["valid"] and report["stats"]["examples"] == 20
    assert report["stats"]["tokens_per_example"]["max"] > 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text(qa_file.read_text() + "not json\n")
    result = run("data", "validate", bad, "--model", tiny_model, "--json")
    assert result.exit_code == 1
    errors = json.loads(result.stdout)["errors"]
    assert errors == [{"line": 21, "code": "invalid_json", "message": errors[0]["message"]}]

    table = run("data", "validate", bad, "--model", tiny_model)
    assert table.exit_code == 1 and "invalid_json" in table.output and "21" in table.output

    tuned = run("tune", bad, "--model", tiny_model)  # the error line keeps its bracketed code, not eaten as markup
    assert tuned.exit_code == 1 and "line 21" in tuned.output and "[invalid_json]" in tuned.output


def test_tune_json_then_chat(qa_file, tiny_model):
    result = run("tune", qa_file, "--model", tiny_model, "--epochs", 1, "--batch-size", 8,
                 "--suffix", "cli", "--seed", 1, "--no-evaluate", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["evaluation"] is None and not (Path(out["run_dir"]) / "evaluation.json").exists()
    assert out["model_id"].startswith(f"ft:{tiny_model}:cli:")
    for key in ("output_dir", "trained_tokens", "seconds", "train_loss", "valid_loss", "base_valid_loss"):
        assert out[key] is not None, key

    chat = run("chat", out["model_id"], "What color is item 3?", "--max-tokens", 5)
    assert chat.exit_code == 0, chat.output
    from tempering.serve import SamplingParams, complete, load_chat_model

    expected = complete(load_chat_model(out["model_id"]), [{"role": "user", "content": "What color is item 3?"}],
                        SamplingParams(max_tokens=5))
    assert chat.stdout == expected + "\n"  # the model's greedy answer, printed as it streamed

    listed = json.loads(run("models", "list", "--search", "fine-tuned", "--json").stdout)
    assert [m["id"] for m in listed] == [out["model_id"]]


def test_interactive_chat_keeps_history_until_exit(tiny_model):
    result = runner.invoke(app, ["chat", tiny_model, "--max-tokens", "3"], input="hello\nagain\n/exit\n")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("args", "needle"), [
    (("tune", "{qa}", "--model", "no-such-model"), "unknown model 'no-such-model'"),
    (("tune", "{qa}", "--epochs", "0"), "hyperparameters.n_epochs"),
    (("tune", "{qa}", "--suffix", "bad suffix"), "suffix"),
    (("tune", "{qa}", "--adapter", "full", "--lora-rank", "8"), "lora: Value error, LoRA settings apply"),
    (("tune", "{qa}", "--optimizer", "lion", "--early-stopping", "soon"), "optimizer: Input should be"),
    (("chat", "ft:tiny-llama::nothere", "hi"), "no fine-tuned model"),
])
def test_errors_are_one_clear_line_and_exit_1(args, needle, qa_file):
    result = run(*[a.format(qa=qa_file) for a in args])
    assert result.exit_code == 1
    assert needle in result.output
    assert "Traceback" not in result.output
