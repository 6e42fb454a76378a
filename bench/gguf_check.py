"""Does llama.cpp run Tempering's GGUF export of the embedded model as transformers runs the model?

    python bench/gguf_check.py [--model ID] [--prompts 10] [--tokens 32] [--threads 2]

Exports ``--model`` (a fine-tuned chat model of this TEMPERING_HOME; default the embedded base,
SmolLM2-135M-Instruct) as GGUF f16 and q8_0 (``tempering export --format gguf``), loads each file in llama.cpp
(llama-cpp-python, the bench extra) and compares its greedy tokens on ``--prompts`` prompts (the Xbox sample's
validation questions in the model's chat template) with transformers' greedy tokens of the same model
(adapter merged, float32), token for token up to ``--tokens`` or the end of the turn. The issue's bar: f16
identical on 10 of 10 prompts, q8_0 on at least 9.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    os.environ.setdefault("TEMPERING_HOME", tempfile.mkdtemp(prefix="tempering-bench-"))
    import llama_cpp
    import torch

    torch.set_num_threads(args.threads)
    from tempering.cli.common import quiet_libraries
    from tempering.data.encode import encode_prompt
    from tempering.evaluate.measure import prompt_of
    from tempering.export import export_model
    from tempering.serve.local import load_chat_model

    quiet_libraries()
    chat = load_chat_model(args.model)
    lines = (REPO / "examples/xbox-support/validation.jsonl").read_text(encoding="utf-8").splitlines()
    prompts = [encode_prompt(chat.tokenizer, prompt_of(json.loads(line)["messages"])) for line in lines]
    prompts = prompts[: args.prompts]

    def cut(tokens: list[int]) -> list[int]:  # up to the budget or the end of the turn (not included)
        tokens = tokens[: args.tokens]
        ends = [i for i, t in enumerate(tokens) if t in chat.eos_ids]
        return tokens[: ends[0]] if ends else tokens

    with torch.inference_mode():
        want = [cut(chat.model.generate(torch.tensor([prompt]), max_new_tokens=args.tokens, do_sample=False,
                                        pad_token_id=chat.tokenizer.pad_token_id)[0, len(prompt):].tolist())
                for prompt in prompts]
    work = Path(tempfile.mkdtemp(prefix="gguf-check-"))
    print(f"llama-cpp-python {llama_cpp.__version__}; {args.model}; {len(prompts)} prompts, {args.tokens} tokens")
    print(f"{'GGUF':<6} {'file MB':>8} {'same':>6}  first differing token (prompt: position)")
    for dtype, label in (("auto", "f16"), ("q8_0", "q8_0")):
        began = time.perf_counter()
        folder = export_model(args.model, "gguf", work / label, dtype=dtype).path
        exported = time.perf_counter() - began
        path = folder / "model.gguf"
        llm = llama_cpp.Llama(str(path), n_ctx=2048, n_threads=args.threads, verbose=False)
        same, first = 0, []
        for n, (prompt, expected) in enumerate(zip(prompts, want, strict=True)):
            got = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
                got.append(token)
                if len(got) >= args.tokens or token in chat.eos_ids:
                    break
            got = cut(got)
            same += got == expected
            if got != expected:
                at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
                first.append(f"{n}: {at}")
        del llm
        if label == "q8_0":  # the same file's weights de-quantized, in transformers: what its rounding alone does
            from transformers import AutoModelForCausalLM

            own = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
            with torch.inference_mode():
                rounded = [cut(own.generate(torch.tensor([prompt]), max_new_tokens=args.tokens, do_sample=False,
                                            pad_token_id=chat.tokenizer.pad_token_id)[0, len(prompt):].tolist())
                           for prompt in prompts]
            print(f"{'':<6} {'':>8} {sum(a == b for a, b in zip(rounded, want, strict=True)):>3}/{len(prompts)}  "
                  "transformers on the q8_0 file's own weights (float compute) vs float32")
        print(f"{label:<6} {path.stat().st_size / 2**20:>8.1f} {same:>3}/{len(prompts)}  {', '.join(first) or '-'}"
              f"  (export {exported:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
