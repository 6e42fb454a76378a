"""How long an evaluation's answers take: the red-team prompts and the Xbox validation prompts answered by the
embedded model one at a time (``serve.local.generate``, the old path) and in batches (``answer_all``, what
evaluations use now), greedy, in the same run.

    python bench/eval_answers.py [--batch-size 16] [--threads 2]

Prints seconds, tokens generated, the ratio, and how many answers are the same text both ways.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from tempering.cli.common import quiet_libraries
    from tempering.evaluate.measure import prompt_of
    from tempering.evaluate.redteam import MAX_NEW_TOKENS, PROMPTS
    from tempering.serve.local import SamplingParams, answer_all, generate, load_chat_model

    quiet_libraries()
    chat = load_chat_model("smollm2-135m-instruct")
    xbox = [prompt_of(json.loads(line)["messages"])
            for line in (REPO / "examples/xbox-support/validation.jsonl").read_text(encoding="utf-8").splitlines()]
    sets = {"red team": ([[{"role": "user", "content": q}] for q, _ in PROMPTS], MAX_NEW_TOKENS),
            "xbox validation": (xbox, 64)}
    print(f"{'prompts':<16} {'n':>3} {'one by one s':>13} {'batched s':>10} {'ratio':>6} {'tokens':>7} {'same':>6}")
    for name, (conversations, budget) in sets.items():
        params = SamplingParams(max_tokens=budget, temperature=0)
        began = time.perf_counter()
        alone = ["".join(c.text for c in generate(chat, m, params)) for m in conversations]
        one = time.perf_counter() - began
        began = time.perf_counter()
        together = answer_all(chat, conversations, params, batch_size=args.batch_size)
        batched = time.perf_counter() - began
        same = sum(a == b.text for a, b in zip(alone, together, strict=True))
        print(f"{name:<16} {len(conversations):>3} {one:>13.1f} {batched:>10.1f} {one / batched:>5.2f}x "
              f"{sum(a.tokens for a in together):>7} {same:>3}/{len(conversations)}", flush=True)
    print(f"(SmolLM2-135M float32, torch {torch.__version__}, {args.threads} threads, batch {args.batch_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
