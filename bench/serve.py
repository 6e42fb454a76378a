"""Serving: a live ``tempering serve`` on the embedded model against plain transformers and llama.cpp.

    python bench/serve.py [--new-tokens 64] [--adapters ID,ID,ID,ID]

One run, in order:
  1. four adapters of the embedded model: the final model and three checkpoints of one short fine-tune on the
     bundled sample data (or the ids given with --adapters);
  2. a live server (``tempering serve --workers 0``, its own process) with a deployment per adapter and one of
     the base model; over HTTP, streaming, greedy, ``--new-tokens`` per answer:
       - one stream with an adapter: time to first token and decode tokens/s;
       - aggregate tokens/s at 1, 4 and 8 concurrent streams (one adapter);
       - 4 concurrent streams on 4 different adapters vs 4 on one adapter (mean latency);
       - time to first token for a prompt of about 100 tokens;
     the comparisons repeated ``--repeats`` times, interleaved, their median ratios reported;
  3. baselines on the same prompt in this process, after the server is stopped: transformers ``generate``
     (float32, the base model) and llama.cpp (``llama-cpp-python``, the embedded Q4_1 GGUF, 2 threads);
then prints every number, the ratios and issue 18's targets. Needs the ``bench`` extra for llama.cpp (its
baseline is skipped, and said so, without it). Uses TEMPERING_HOME like the CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
BASE = "smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Write a detailed, step-by-step guide to setting up a new games console, "
           "from unboxing to playing the first game."}]
# issue 18's time to first token is for a 100-token prompt: about 100 tokens once in the chat template
LONG_PROMPT = [{"role": "user", "content": (
    "I bought a games console last week and the set-up has gone wrong twice. The first time it stopped while "
    "downloading an update, and the second time it would not find my home network even though my phone and "
    "laptop connect without trouble. My router is in the next room. What should I check first, and in which "
    "order, so that I can play tonight?")}]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens per answer (default 64)")
    p.add_argument("--adapters", help="four fine-tuned ids or checkpoints, comma-separated (default: fine-tune "
                                      "the bundled sample for one epoch and use its final model and checkpoints)")
    p.add_argument("--repeats", type=int, default=3, help="single-stream repeats; the median is reported")
    p.add_argument("--quantize", default="none,int8", help="server weight modes to measure, comma-separated "
                                                           "(TEMPERING_SERVE_QUANTIZE; default none,int8)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ setup

def make_adapters() -> list[str]:
    from tempering.train.refs import checkpoint_name
    from tempering.train.checkpoint import list_checkpoints
    from tempering.train.config import parse_config
    from tempering.train.recipe import tune

    print("fine-tuning the sample for one epoch to get four adapters ...", flush=True)
    started = time.perf_counter()
    result = tune(parse_config({
        "model": BASE, "training_file": str(REPO / "examples/xbox-support/train.jsonl"), "suffix": "bench-serve",
        "evaluate": False, "checkpoint_every_steps": 3,
        "hyperparameters": {"n_epochs": 1, "batch_size": 8, "learning_rate_multiplier": 2}}))
    from tempering.train import artifacts

    folder, _ = artifacts.resolve_finetuned(result.model_id)
    steps = sorted(int(c.name.removeprefix("step-")) for c in list_checkpoints(folder.parent))
    print(f"  done in {time.perf_counter() - started:.0f} s: {result.model_id}, checkpoints at steps {steps}")
    return [result.model_id] + [checkpoint_name(result.model_id, s) for s in steps[-3:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_key() -> str:
    from sqlalchemy import select

    from tempering.services.projects import project_key
    from tempering.settings import get_settings
    from tempering.store.db import Database
    from tempering.store.models import Project

    db = Database(get_settings().database)
    db.migrate()
    with db.session() as session:
        project = session.scalars(select(Project).order_by(Project.created_at)).first()
        if project is None:
            project = Project(name="default")
            session.add(project)
            session.flush()
        key = project_key(session, project.id, "bench-serve")
    db.dispose()
    return key


class Server:
    def __init__(self, quantize: str):
        self.port = free_port()
        self.key = bench_key()
        env = {**os.environ, "TEMPERING_SERVE_QUANTIZE": quantize}
        self.process = subprocess.Popen([sys.executable, "-m", "tempering.cli.main", "serve", "--workers", "0",
                                         "--port", str(self.port)], stderr=subprocess.DEVNULL, env=env)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}/v1", timeout=600,
                                 headers={"Authorization": f"Bearer {self.key}"})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.http.get("/models").raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the server did not start")

    def deploy(self, model: str, name: str) -> None:
        self.http.delete(f"/deployments/{name}")  # a leftover of an earlier run
        # the content filter off: it holds text back until a window is checked, so with it on the first token
        # arrives with the first window and the numbers measure the filter, not the engine
        r = self.http.post("/deployments", json={"model": model, "name": name, "max_concurrent_requests": 32,
                                                 "force": True, "content_filter": False})
        if r.status_code != 200:
            raise SystemExit(f"deploying {model}: {r.text}")

    def stream(self, name: str, new_tokens: int, messages: list[dict] = PROMPT) -> dict:
        """One streamed, greedy chat answer: arrival times of its tokens (and the prompt's tokens)."""
        body = {"model": name, "messages": messages, "max_tokens": new_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        start = time.perf_counter()
        first = last = None
        tokens = prompt_tokens = 0
        with self.http.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
                    prompt_tokens = event["usage"]["prompt_tokens"]
                if event["choices"] and event["choices"][0]["delta"].get("content"):
                    last = time.perf_counter()
                    first = first or last
        end = time.perf_counter()
        return {"ttft": first - start, "latency": end - start, "tokens": tokens, "prompt_tokens": prompt_tokens,
                "decode_tps": (tokens - 1) / (last - first) if last and last > first else None}

    def close(self) -> None:
        for name in self.deployed:
            self.http.delete(f"/deployments/{name}")
        self.process.terminate()
        self.process.wait(timeout=30)

    deployed: list[str] = []


def concurrent(server: Server, names: list[str], new_tokens: int) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(lambda n: server.stream(n, new_tokens), names))
    return time.perf_counter() - start, results


# ------------------------------------------------------------------------------------------------ baselines

def transformers_baseline(new_tokens: int) -> dict:
    import torch

    from tempering.catalog import get_card, load_causal_lm, load_tokenizer
    from tempering.data.encode import encode_prompt
    from tempering.hardware import select_placement

    card = get_card(BASE)
    tokenizer, model = load_tokenizer(card), load_causal_lm(card, select_placement("cpu")).eval()
    ids = torch.tensor([encode_prompt(tokenizer, PROMPT)])
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    model.generate(ids, **{**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model.generate(ids, **kwargs)
        times.append(time.perf_counter() - start)
    return {"tps": new_tokens / min(times), "prompt_tokens": ids.shape[1]}


def llama_cpp_baseline(new_tokens: int) -> dict | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    from tempering.catalog import get_card, load_tokenizer
    from tempering.catalog.loading import embedded_gguf_path
    from tempering.data.encode import encode_prompt

    card = get_card(BASE)
    prompt = encode_prompt(load_tokenizer(card), PROMPT)
    llm = Llama(model_path=str(embedded_gguf_path(card)), n_threads=2, n_ctx=2048, verbose=False, seed=0)
    best = None
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        first = None
        count = 0
        for _token in llm.generate(prompt, temp=0.0, top_k=1):
            count += 1
            if first is None:
                first = time.perf_counter()
            if count == new_tokens:
                break
        end = time.perf_counter()
        run = {"tps": new_tokens / (end - start), "decode_tps": (new_tokens - 1) / (end - first),
               "ttft": first - start}
        best = run if best is None or run["tps"] > best["tps"] else best
    return best


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> None:
    args = parse_args(argv)
    n = args.new_tokens
    from tempering.catalog import get_card, resolve_weights

    resolve_weights(get_card(BASE))  # converts the embedded GGUF once, if this home has not yet
    adapters = args.adapters.split(",") if args.adapters else make_adapters()
    if len(adapters) != 4:
        raise SystemExit("--adapters takes exactly four ids")

    print(f"machine: {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}")
    runs = {mode: measure_server(mode, adapters, n, args.repeats) for mode in args.quantize.split(",")}
    print("baselines (server stopped) ...", flush=True)
    baselines = {"transformers": transformers_baseline(n), "llama_cpp": llama_cpp_baseline(n)}
    for mode, results in runs.items():
        report({**results, **baselines}, n, mode)


def measure_server(mode: str, adapters: list[str], n: int, repeats: int) -> dict:
    print(f"server with TEMPERING_SERVE_QUANTIZE={mode} ...", flush=True)
    server = Server(mode)
    results: dict = {}
    try:
        names = [f"bench-a{i}" for i in range(4)]
        for name, model in zip(names, adapters):
            server.deploy(model, name)
        server.deploy(BASE, "bench-base")
        server.deployed = names + ["bench-base"]
        for name in ("bench-base", *names):  # loads the base model and every adapter once
            server.stream(name, 4)

        singles = [server.stream("bench-a0", n) for _ in range(repeats)]
        results["single"] = {k: statistics.median(s[k] for s in singles) for k in ("ttft", "decode_tps", "latency")}
        results["single"]["tokens"] = singles[0]["tokens"]
        base_single = [server.stream("bench-base", n) for _ in range(repeats)]
        results["single_base_decode_tps"] = statistics.median(s["decode_tps"] for s in base_single)

        long_runs = [server.stream("bench-a0", 8, LONG_PROMPT) for _ in range(repeats)]
        results["long_prompt"] = {"tokens": long_runs[0]["prompt_tokens"],
                                  "ttft": statistics.median(r["ttft"] for r in long_runs)}

        # Run-to-run spread on a shared 2-core machine is 10-20 %: each comparison is repeated ``repeats``
        # times, its arms interleaved, and the median of the repeats' ratios is the figure (range beside it).
        samples = {c: [] for c in (1, 4, 8)}
        mixes = []
        for _ in range(repeats):
            for c in (1, 4, 8):
                wall, runs = concurrent(server, ["bench-a0"] * c, n)
                samples[c].append({"tps": sum(r["tokens"] for r in runs) / wall, "wall": wall,
                                                "mean_latency": statistics.mean(r["latency"] for r in runs),
                                                "mean_ttft": statistics.mean(r["ttft"] for r in runs)})
            _, same = concurrent(server, ["bench-a0"] * 4, n)
            _, mixed = concurrent(server, names, n)
            # the adapters answer at different lengths (a checkpoint may run to the limit where the final model
            # stops): compare the time per generated token, and whole answers beside it
            mixes.append({"same_latency": statistics.mean(r["latency"] for r in same),
                          "mixed_latency": statistics.mean(r["latency"] for r in mixed),
                          "same_per_token": statistics.mean(r["latency"] / max(r["tokens"], 1) for r in same),
                          "mixed_per_token": statistics.mean(r["latency"] / max(r["tokens"], 1) for r in mixed),
                          "mixed_tokens": [r["tokens"] for r in mixed]})
        results["scale"] = [a["tps"] / b["tps"] for a, b in zip(samples[8], samples[1])]
        results["mix"] = [m["mixed_per_token"] / m["same_per_token"] for m in mixes]
        results["mixes"] = mixes
        results["aggregate"] = {c: {k: statistics.median(run[k] for run in runs) for k in runs[0]}
                                for c, runs in samples.items()}
    finally:
        server.close()
    return results


def report(r: dict, n: int, mode: str) -> None:
    s = r["single"]
    weights = "float32" if mode == "none" else f"{mode} weights"
    print(f"\n== Tempering serve, embedded model, {weights}, {n} new tokens, greedy, streamed over HTTP ==")
    print(f"single stream, adapter: time to first token {s['ttft'] * 1000:.0f} ms, decode {s['decode_tps']:.1f} "
          f"tokens/s, latency {s['latency']:.2f} s ({s['tokens']} tokens)")
    print(f"single stream, base model: decode {r['single_base_decode_tps']:.1f} tokens/s")
    for c, a in r["aggregate"].items():
        print(f"{c} concurrent streams (one adapter): aggregate {a['tps']:.1f} tokens/s, mean latency "
              f"{a['mean_latency']:.2f} s, mean time to first token {a['mean_ttft'] * 1000:.0f} ms")
    for m in r["mixes"]:
        print(f"4 streams: one adapter mean latency {m['same_latency']:.2f} s ({m['same_per_token'] * 1000:.1f} ms a "
              f"token); four adapters {m['mixed_latency']:.2f} s ({m['mixed_per_token'] * 1000:.1f} ms a token; "
              f"answers of {m['mixed_tokens']} tokens)")
    print(f"time to first token, a {r['long_prompt']['tokens']}-token prompt: {r['long_prompt']['ttft'] * 1000:.0f} ms")
    hf, ll = r["transformers"], r["llama_cpp"]
    print("\n== baselines, same prompt ==")
    print(f"transformers generate (float32, base): {hf['tps']:.1f} tokens/s end to end")
    if ll:
        print(f"llama.cpp (Q4_1 GGUF, 2 threads, base): decode {ll['decode_tps']:.1f} tokens/s, {ll['tps']:.1f} "
              "end to end")
    else:
        print("llama.cpp: not installed (pip install -e '.[bench]'); its ratio is not reported")

    print(f"\n== targets of issue 18 ({weights}; the issue's are for int4 weights) ==")
    if ll:
        ratio = s["decode_tps"] / ll["decode_tps"]
        print(f"single-stream decode with an adapter / llama.cpp base decode: {ratio:.2f}x (target >= 1.0x) "
              f"{'MET' if ratio >= 1.0 else 'NOT MET'}")
    scale, mix = statistics.median(r["scale"]), statistics.median(r["mix"])
    print(f"8 streams aggregate / 1 stream: {scale:.2f}x, median of {len(r['scale'])} "
          f"({min(r['scale']):.2f}-{max(r['scale']):.2f}) (target >= 5x) {'MET' if scale >= 5 else 'NOT MET'}")
    whole = statistics.median(m["mixed_latency"] / m["same_latency"] for m in r["mixes"])
    print(f"4 adapters at once / one adapter, latency per token: {mix:.2f}x, median of {len(r['mix'])} "
          f"({min(r['mix']):.2f}-{max(r['mix']):.2f}) (target <= 1.2x) {'MET' if mix <= 1.2 else 'NOT MET'} "
          f"(whole answers: {whole:.2f}x)")
    ttft = r["long_prompt"]["ttft"] * 1000
    print(f"time to first token, {r['long_prompt']['tokens']}-token prompt: {ttft:.0f} ms (target <= 150 ms) "
          f"{'MET' if ttft <= 150 else 'NOT MET'}")
    print(f"versus transformers generate: single-stream decode {s['decode_tps'] / hf['tps']:.2f}x, "
          f"8-stream aggregate {r['aggregate'][8]['tps'] / hf['tps']:.2f}x")


if __name__ == "__main__":
    main()
