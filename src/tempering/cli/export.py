"""``tempering export``: a fine-tuned model as a folder other tools load (PEFT adapter or merged weights)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tempering.cli.common import out, print_json, quiet_libraries, safe

MODEL_HELP = ("A fine-tuned id (ft:…), a checkpoint (<fine-tuned id>@step-<N>, "
              "<fine-tuned id>:ckpt-step-<N>, or a checkpoint folder), or a catalog id (merged or gguf: a copy "
              "of its float weights).")
FORMAT_HELP = ("peft: the LoRA adapter and tokenizer, for PeftModel.from_pretrained(base, DIR). merged: the "
               "adapter merged into the base weights (safetensors, config, tokenizer), for plain "
               "transformers. gguf: one model.gguf (adapter merged; f16, or --dtype float32, bfloat16, q8_0) with "
               "the chat template, and an Ollama Modelfile, for llama.cpp, Ollama and LM Studio.")

_LOADING = {
    ("peft", "chat"): "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(<base>), '{path}')",
    ("peft", "classification"): "PeftModel.from_pretrained(AutoModelForSequenceClassification"
                                ".from_pretrained(<base>, num_labels=…), '{path}')",
    ("merged", "chat"): "AutoModelForCausalLM.from_pretrained('{path}')",
    ("merged", "classification"): "AutoModelForSequenceClassification.from_pretrained('{path}')",
    ("gguf", "chat"): "llama-cli -m '{path}/model.gguf', or: ollama create NAME -f '{path}/Modelfile'",
}


def export(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    fmt: Annotated[str, typer.Option("--format", help=FORMAT_HELP)],
    out_dir: Annotated[Path | None, typer.Option("--out", help="Folder to create; default "
                                                 "./<model id>-<format>.", file_okay=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an earlier export in --out.")] = False,
    dtype: Annotated[str, typer.Option(help="Dtype of merged weights: auto (the base's), float32, bfloat16 "
                                       "or float16; for gguf also q8_0 (auto: f16).")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Export a fine-tuned model or checkpoint as a PEFT adapter, as merged weights, or as GGUF."""
    quiet_libraries()
    from tempering.export import export_model

    result = export_model(model, fmt, out_dir, force=force, dtype=dtype, allow_paths=True)
    if as_json:
        print_json(result.to_dict())
        return
    dtype_note = f", {result.dtype}" if result.dtype else ""
    out.print(f"Exported {safe(result.model)} ({result.format}{dtype_note}) to {safe(result.path)}",
              highlight=False, emoji=False)
    out.print(f"Load it with {safe(_LOADING[result.format, result.task].format(path=result.path))}",
              highlight=False, emoji=False)
