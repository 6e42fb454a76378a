"""What a fine-tuning run leaves on disk, and how a fine-tuned model id finds it again.

One folder per run under ``TEMPERING_HOME/runs/<short id>/``::

    run.json            config, resolved hyperparameters, data hashes, status (rewritten atomically)
    events.jsonl        one JSON object per event (messages and metrics), appended as the run goes
    results.csv         step metrics with OpenAI's column names
    checkpoints/        one complete folder per epoch (see ``checkpoint``)
    model/              the kept model (the best epoch's): a PEFT adapter, or full weights (model.safetensors),
                        + tempering.json, written atomically at the end

Fine-tuned model ids look like ``ft:<base id>:<suffix>:<short id>`` (the suffix may be empty, as in
OpenAI's ids). With a shared artifact store (``store.objects``, ``TEMPERING_ARTIFACTS_URL``) the run folder is
this machine's working copy: ``publish_run`` shares run.json, events, results and the evaluation report (at
every checkpoint and at the end), the final model is published files first and ``tempering.json`` last, and
the readers here (``resolve_finetuned``, ``list_finetuned``, ``read_run``) pull what this home lacks.
Imports no torch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from tempering.errors import ModelNotFoundError
from tempering.settings import get_settings
from tempering.store import objects

METADATA = "tempering.json"
FULL_WEIGHTS = "model.safetensors"  # a fully fine-tuned model's (or checkpoint's) own weights (``train.weights``)
RUN_FILE = "run.json"  # the run's config, resolved hyperparameters, data hashes and status
RESULT_COLUMNS = [
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
]
_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
CHECKPOINT_MARKER = "COMPLETE"  # a checkpoint folder without it is incomplete (``train.checkpoint`` writes it)
RUN_LOGS = (RUN_FILE, "events.jsonl", "results.csv", "evaluation.json")  # a run's own files, shared as they change


def is_full(folder: Path | str | None) -> bool:
    """Whether a model or checkpoint folder holds full weights (``FULL_WEIGHTS``), not a PEFT adapter."""
    return folder is not None and (Path(folder) / FULL_WEIGHTS).is_file()


def new_short_id() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(8))


def model_id_for(base: str, suffix: str | None, short_id: str) -> str:
    return f"ft:{base}:{suffix or ''}:{short_id}"


def is_finetuned_id(model_id: str) -> bool:
    return model_id.startswith("ft:")


def run_dir(short_id: str) -> Path:
    """A run's folder. The id comes from model names people type, so it is checked to be an id (letters,
    digits, '-', '_'), never a path: ``../x`` or ``a/b`` name no run."""
    if not _RUN_ID.match(short_id):
        raise ModelNotFoundError(f"no run {short_id[:80]!r}", param="model")
    return get_settings().runs_dir / short_id


@contextlib.contextmanager
def atomic_dir(target: Path):
    """Yield a temp folder beside ``target``; on success it replaces ``target`` in one rename."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class RunLog:
    """Appends events to ``events.jsonl`` and metric rows to ``results.csv`` (a no-op when not ``enabled``:
    in a multi-process run only process 0 writes)."""

    def __init__(self, folder: Path, *, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        self.events_path = folder / "events.jsonl"
        self.results_path = folder / "results.csv"
        if not self.results_path.exists():
            with self.results_path.open("w", newline="", encoding="utf-8") as fh:
                csv.writer(fh).writerow(RESULT_COLUMNS)

    def event(self, event: dict) -> None:
        if not self.enabled:
            return
        with self.events_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, default=str) + "\n")

    def truncate_results(self, step: int) -> None:
        """Drop metric rows after ``step``: a resumed run recomputes them."""
        if not self.enabled:
            return
        with self.results_path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
        tmp = self.results_path.with_name(f".{self.results_path.name}.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(kept)
        os.replace(tmp, self.results_path)

    def metrics_row(self, row: dict) -> None:
        if not self.enabled:
            return
        with self.results_path.open("a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerow(["" if row.get(c) is None else row[c] for c in RESULT_COLUMNS])


def stored_input_format(meta: dict) -> str:
    """How a saved classifier reads its texts (``train.classify.encode_inputs``), from its metadata: ``text``
    when absent (every classifier saved before the chat-template input)."""
    return meta.get("input_format") or "text"


def run_input_format(folder: Path) -> str:
    """How a classification run (not a continued one) reads its texts, as it started: its ``run.json``'s
    ``input_format``, else its ``head_init`` event's (runs started before run.json recorded it), else ``text``
    (runs started before the chat-template input, whose ``head_init`` event has none, or which had no such
    event). A resumed run must keep it: its checkpoints were trained on it, whatever today's default."""
    run = read_run(folder) or {}
    if run.get("input_format"):
        return run["input_format"]
    events = folder / "events.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines() if events.exists() else []
    for line in lines:
        event = json.loads(line)
        if event.get("type") == "head_init":
            return (event.get("data") or {}).get("input_format") or "text"
    return "text"


def resolve_finetuned(model_id: str) -> tuple[Path, dict]:
    """The adapter folder and metadata of a fine-tuned model id."""
    parts = model_id.split(":")
    if len(parts) != 4 or parts[0] != "ft" or not parts[3]:
        raise ModelNotFoundError(
            f"{model_id!r} is not a fine-tuned model id (ft:<base>:<suffix>:<id>)", param="model"
        )
    folder = run_dir(parts[3]) / "model"
    meta_path = folder / METADATA
    if not objects.pull_folder(folder, METADATA):
        raise ModelNotFoundError(f"no fine-tuned model {model_id!r}", param="model")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("id") != model_id:
        raise ModelNotFoundError(f"no fine-tuned model {model_id!r} (found {meta.get('id')!r})", param="model")
    return folder, meta


def base_model_of(model_id: str) -> str:
    """The catalog id under a model: itself for a catalog id, the recorded base for a fine-tuned one."""
    return resolve_finetuned(model_id)[1]["base_model"] if is_finetuned_id(model_id) else model_id


def list_finetuned() -> list[dict]:
    runs = get_settings().runs_dir
    here = {p.parent.parent.name for p in runs.glob(f"*/model/{METADATA}")} if runs.exists() else set()
    shared = objects.remote_markers(runs, f"model/{METADATA}")  # trained elsewhere: metadata read, not cached
    found = []
    for name in sorted(here | set(shared)):
        with contextlib.suppress(OSError, json.JSONDecodeError, TypeError):
            found.append(json.loads(objects.fetch_bytes(runs / name / "model" / METADATA)))
    return found


def publish_run(folder: Path) -> None:
    """Share the run's own files (run.json, events, results, evaluation report) with a shared artifact store."""
    for name in RUN_LOGS:
        objects.publish(folder / name)


def read_run(folder: Path) -> dict | None:
    """The run's ``run.json``; a run this home lacks is pulled (its own files) from a shared artifact store."""
    if not (folder / RUN_FILE).is_file() and objects.pull(folder / RUN_FILE):
        for name in RUN_LOGS[1:]:
            objects.pull(folder / name)
    with contextlib.suppress(OSError, json.JSONDecodeError):
        return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    return None


def find_resumable(config: dict, data_sha256: dict) -> str | None:
    """The newest unfinished run started with exactly this config on exactly these files."""
    runs = get_settings().runs_dir
    candidates = []
    for folder in runs.iterdir() if runs.is_dir() else []:
        run = read_run(folder)
        if (run and run.get("status") != "succeeded" and run.get("config") == config
                and run.get("data_sha256") == data_sha256 and not _alive(run.get("pid"))):
            candidates.append((run.get("created_at", 0), folder.name))
    return max(candidates)[1] if candidates else None


def _alive(pid: int | None) -> bool:
    """Whether a process with this id runs here (then its run is not ours to resume)."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
