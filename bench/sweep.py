"""Does a sweep beat the defaults? Issue 19's check on the Xbox set, on rows nothing was chosen on.

The bundled Xbox training file is split once (seeded) into the rows every job trains on and a **test part**
that no job trains or selects on; the bundled validation file is the selection set of every job (the kept
epoch) and of the sweep (its objective). Then, through the real service (the API in-process, one worker
running every job in its own process, the sweep driver between jobs, as ``tempering serve`` does):

- the **default job** three times (seeds 0, 1, 2; no hyperparameter given: "auto" as a new user gets it);
- a **sweep** of ``--trials`` trials over the default search space (learning-rate multiplier, epochs, LoRA
  rank), Optuna choosing and pruning (the defaults of ``POST /v1/fine_tuning/sweeps``).

Every model is then scored on the test part: the loss on the assistant tokens, as training's validation
computes it (``evaluate.measure.chat_loss``), and with ``--rouge`` the ROUGE-L of greedy answers. The verdict
is the issue's: the sweep's best trial beats the default job by more than the spread (max - min) of its
three seeds. Jobs run with ``evaluate: false`` (the bench scores them itself; evaluation changes no model).

    TEMPERING_HOME=/path/to/home python bench/sweep.py [--trials 6] [--seeds 0 1 2] [--test-rows 22] [--rouge]

The service runs over a fresh home in a temporary folder (its own database, files and runs), which links the
converted base models of ``TEMPERING_HOME`` so nothing is converted again; ``TEMPERING_HOME`` is left as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "examples" / "xbox-support"


def split_rows(path: Path, test_rows: int, seed: int) -> tuple[list[str], list[str]]:
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    order = list(range(len(lines)))
    random.Random(seed).shuffle(order)  # noqa: S311  (a seeded split, not a secret)
    test = set(order[:test_rows])
    return [lines[i] for i in range(len(lines)) if i not in test], [lines[i] for i in sorted(test)]


def fresh_home(work: Path) -> Path:
    """A new home whose ``models`` links the converted base models of the caller's home."""
    from tempering.settings import get_settings, reset_settings

    source = get_settings().models_dir
    home = work / "home"
    (home / "models").mkdir(parents=True)
    if source.is_dir():
        for model in source.iterdir():
            (home / "models" / model.name).symlink_to(model.resolve(), target_is_directory=True)
    os.environ["TEMPERING_HOME"] = str(home)  # the worker's job processes inherit it
    reset_settings()
    return home


def run_service(train: Path, valid: Path, args) -> tuple[list[dict], dict, float]:
    """The default jobs and the sweep through the API, one worker running them all: (jobs, sweep, seconds)."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.jobs.executors import LocalProcessExecutor
    from tempering.jobs.worker import Worker
    from tempering.services.sweeps import advance_sweeps
    from tempering.settings import get_settings

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    headers = {"Authorization": f"Bearer {app.state.initial_api_key}"}

    def upload(path: Path) -> str:
        with open(path, "rb") as f:
            response = client.post("/v1/files", headers=headers, data={"purpose": "fine-tune"},
                                   files={"file": (path.name, f)})
        response.raise_for_status()
        return response.json()["id"]

    base = {"model": args.model, "training_file": upload(train), "validation_file": upload(valid),
            "evaluate": False}
    jobs = []
    for seed in args.seeds:
        response = client.post("/v1/fine_tuning/jobs", headers=headers, json={**base, "seed": seed,
                                                                              "suffix": f"default-{seed}"})
        response.raise_for_status()
        jobs.append(response.json()["id"])
    response = client.post("/v1/fine_tuning/sweeps", headers=headers,
                           json={**base, "seed": args.sweep_seed, "suffix": "sweep", "n_trials": args.trials})
    response.raise_for_status()
    sweep_id = response.json()["id"]

    worker = Worker(app.state.db, executor=LocalProcessExecutor(), between_jobs=advance_sweeps)
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        while True:
            done = [client.get(f"/v1/fine_tuning/jobs/{j}", headers=headers).json() for j in jobs]
            sweep = client.get(f"/v1/fine_tuning/sweeps/{sweep_id}", headers=headers).json()
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in done) and \
                    sweep["status"] in ("succeeded", "failed", "cancelled"):
                return done, sweep, time.perf_counter() - started
            time.sleep(2)
    finally:
        worker.stop()
        thread.join(timeout=120)
        app.state.db.dispose()


def score(model_id: str, examples: list[list[dict]], rouge: bool) -> dict:
    from tempering.evaluate import measure
    from tempering.serve.local import load_chat
    from tempering.train import refs

    chat = load_chat(refs.resolve(model_id), "auto")
    loss, cost = measure.chat_loss(chat, examples)
    out = {"test_loss": round(loss.loss, 4), "test_token_accuracy": round(loss.mean_token_accuracy, 4),
           "seconds": round(cost.seconds, 1)}
    if rouge:
        texts, _, _ = measure.answers(chat, examples, 160)
        out["test_rouge_l"] = round(measure.generation_metrics(texts, examples, None, 0).text.rouge_l, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sweep-seed", type=int, default=0)
    parser.add_argument("--test-rows", type=int, default=22, help="rows of train.jsonl held out as the test part")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--rouge", action="store_true", help="also ROUGE-L of greedy answers on the test part")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from tempering.cli.common import quiet_libraries
    from tempering.data.formats.reading import load_examples

    quiet_libraries()
    work = Path(tempfile.mkdtemp(prefix="tempering-sweep-bench-"))
    fresh_home(work)
    train_lines, test_lines = split_rows(DATA / "train.jsonl", args.test_rows, args.split_seed)
    train, test, valid = work / "train.jsonl", work / "test.jsonl", DATA / "validation.jsonl"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    test.write_text("\n".join(test_lines) + "\n", encoding="utf-8")
    print(f"train {len(train_lines)} rows, selection {valid.name}, test {len(test_lines)} rows (never trained "
          f"or selected on); {len(args.seeds)} default jobs, a sweep of {args.trials} trials", flush=True)

    jobs, sweep, seconds = run_service(train, valid, args)
    examples = load_examples(test)[0]
    rows = []
    for job in jobs:
        if job["status"] != "succeeded":
            raise SystemExit(f"default job {job['id']} {job['status']}: {job.get('error')}")
        rows.append({"arm": f"default seed {job['seed']}", "model": job["fine_tuned_model"],
                     "hyperparameters": job["hyperparameters"], **score(job["fine_tuned_model"], examples,
                                                                         args.rouge)})
        print(json.dumps(rows[-1]), flush=True)
    if sweep["status"] != "succeeded":
        raise SystemExit(f"sweep {sweep['id']} {sweep['status']}: {sweep.get('error')}")
    for trial in sweep["trials"]:
        row = {"arm": f"trial {trial['number']}" + (" (best)" if trial["number"] == sweep["best_trial"] else ""),
               "state": trial["state"], "parameters": trial["parameters"], "valid_objective": trial["objective"]}
        if trial["state"] == "complete" and trial.get("fine_tuned_model"):
            row.update(model=trial["fine_tuned_model"], **score(trial["fine_tuned_model"], examples, args.rouge))
        rows.append(row)
        print(json.dumps(row), flush=True)

    defaults = [r["test_loss"] for r in rows if r["arm"].startswith("default")]
    best = next(r for r in rows if r["arm"].endswith("(best)"))
    spread = max(defaults) - min(defaults)
    gain = statistics.mean(defaults) - best["test_loss"]
    summary = {"service_seconds": round(seconds, 1), "default_test_loss_mean": round(statistics.mean(defaults), 4),
               "default_test_loss_spread": round(spread, 4), "best_trial_test_loss": best["test_loss"],
               "best_trial_parameters": best["parameters"], "gain_over_default_mean": round(gain, 4),
               "target": "gain > spread of the default's seeds", "met": gain > spread}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
