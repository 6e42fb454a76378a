"""The shared artifact store against a real S3-compatible server (SeaweedFS, ``s3_fixture``): objects are
published whole with their marker last and pulled only once complete, checksums are checked, the cache is
bounded; a job killed on one "machine" is taken over on another sharing only the database and the bucket and
ends with the same adapter as an uninterrupted run; a server with an empty home serves a model trained
elsewhere; a backup, wiped platform and restore serves the model again. Skipped without the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from conftest import TINY_ID, chat_example
from s3_fixture import s3_env_fixture, s3_server_fixture  # noqa: F401  (the fixtures)
from safetensors.torch import load_file

from tempering.settings import get_settings, reset_settings
from tempering.store import objects
from tempering.store.models import run_id_of

TRAIN = "".join(json.dumps(chat_example(f"Name number {i}.", f"Number {i} is {i * 11}.")) + "\n"
                for i in range(12)).encode()


def _switch_home(monkeypatch, home: Path) -> None:
    monkeypatch.setenv("TEMPERING_HOME", str(home))
    reset_settings()


def test_folders_are_published_marker_last_and_pulled_only_when_complete(s3_env, tempering_home, tmp_path,
                                                                         monkeypatch):
    folder = get_settings().runs_dir / "abc" / "checkpoints" / "step-000003"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(300_000))
    (folder / "metrics.json").write_text('{"step": 3}')
    (folder / "COMPLETE").write_text("ok\n")
    store = objects.shared_store()
    prefix = "runs/abc/checkpoints/step-000003/"
    objects.publish_folder(folder, "COMPLETE")
    assert {o.key for o in store.list(prefix)} == {prefix + n for n in ("adapter_model.safetensors",
                                                                         "metrics.json", "COMPLETE")}
    store.put_bytes("runs/abc/checkpoints/step-000004/metrics.json", b"{}")  # a writer killed before its marker

    _switch_home(monkeypatch, tmp_path / "other-machine")
    runs = get_settings().runs_dir
    assert objects.remote_markers(runs / "abc" / "checkpoints", "COMPLETE") == ["step-000003"]
    assert not objects.pull_folder(runs / "abc" / "checkpoints" / "step-000004", "COMPLETE")
    assert not (runs / "abc" / "checkpoints" / "step-000004").exists()
    assert objects.pull_folder(runs / "abc" / "checkpoints" / "step-000003", "COMPLETE")
    pulled = runs / "abc" / "checkpoints" / "step-000003" / "adapter_model.safetensors"
    assert pulled.read_bytes() == (folder / "adapter_model.safetensors").read_bytes()

    from tempering.train.checkpoint import latest_checkpoint

    shutil.rmtree(runs)
    assert latest_checkpoint(runs / "abc").name == "step-000003"  # found in the bucket, pulled

    # a changed object whose bytes no longer match its recorded sha256 is refused, and nothing is left
    store.put_file(prefix + "metrics.json", folder / "metrics.json", sha256="0" * 64)
    with pytest.raises(objects.ArtifactStoreError, match="sha256"):
        store.get_file(prefix + "metrics.json", tmp_path / "m.json")
    assert not (tmp_path / "m.json").exists()


def test_uploads_are_shared_and_the_cache_is_bounded(s3_env, tempering_home, tmp_path, monkeypatch):
    from tempering.store.artifacts import ArtifactStore

    store = ArtifactStore(get_settings().artifacts_dir)
    sizes = {}
    for i in range(3):
        writer = store.open_upload(f"file-{i}", limit=10_000)
        writer.write(bytes([i]) * 4000)
        sizes[i] = writer.commit()
        os.utime(store.local_path(f"file-{i}"), (1000 + i, 1000 + i))  # file-0 least recently used
    assert objects.shared_store().head("artifacts/files/file-1").size == 4000

    _switch_home(monkeypatch, tmp_path / "worker-home")
    monkeypatch.setenv("TEMPERING_ARTIFACTS_CACHE_BYTES", "9000")
    reset_settings()
    worker = ArtifactStore(get_settings().artifacts_dir)
    assert not worker.local_path("file-2").exists()
    for i in range(3):
        assert worker.file_path(f"file-{i}").read_bytes() == bytes([i]) * 4000
        os.utime(worker.local_path(f"file-{i}"), (2000 + i, 2000 + i))
    held = sorted(p.name for p in (get_settings().artifacts_dir / "files").iterdir())
    assert held == ["file-1", "file-2"]  # the least recently used one went; it is pulled again when needed
    assert worker.file_path("file-0").read_bytes() == bytes([0]) * 4000

    worker.delete("file-1")
    assert objects.shared_store().head("artifacts/files/file-1") is None
    with pytest.raises(objects.ArtifactStoreError, match="names no bucket"):
        objects.open_store("s3:///nobucket")
    with pytest.raises(objects.ArtifactStoreError, match="must be s3://"):
        objects.open_store("http://example.com/x")
