"""Application files against rclone: `uv run python bench/filesync.py --start [--files N]`.

N files of 4 KB to 1 MB (10,000 by default, ~5 GB) into one S3 server, by the filesync worker
(the service's own code: watcher, index, parallel uploads, manifest) and by `rclone sync` to
another prefix of the same server, in the same run. Prints one JSON object:

- `initial_ratio_vs_rclone`: our first full sync's time over rclone's (below 1 is faster);
- `noop_resync_s`: a pass that finds nothing changed (rclone's no-op sync beside it);
- `change_latency_s`: from the end of writing 10 changed files to their `file.synced`;
- `check_ratio_vs_rclone`: our check reading every file (as `rclone check` does) over
  `rclone check`'s time; the index-trusting check's time beside it;
- `peak_rss_mb`: this process's peak resident memory (rclone's is reported beside it).

`--start` starts a throwaway SeaweedFS; otherwise the LIFEBOAT_S3_* settings name the server.
Debian's rclone is installed when missing (apt-get); AWS_CA_BUNDLE is unset for it, as rclone
1.60 fails at start when it is set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lifeboat.common.clusters import ClusterSpec
from lifeboat.common.events import Envelope, FileSynced, Source
from lifeboat.common.settings import S3Settings
from lifeboat.devstack.procs import eventually
from lifeboat.devstack.servers import S3Credentials, S3Ports, SeaweedS3
from lifeboat.filesync import Index, SetStore, SetWorker, Timing, bound_malloc, check
from lifeboat.filesync.settings import FilesyncSettings
from lifeboat.objstore.client import ensure_buckets, make_light_s3_client

BUCKET = "lifeboat-files"
KB = 1024


def ensure_rclone() -> str:
    found = shutil.which("rclone")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "rclone"], check=True)
    return shutil.which("rclone") or "rclone"


def make_files(root: Path, count: int, seed: int = 7) -> int:
    """`count` files of 4 KB to 1 MB in 100 directories; the total size."""
    rng = random.Random(seed)
    total = 0
    for i in range(count):
        size = rng.randint(4 * KB, 1024 * KB)
        path = root / f"d{i % 100:02d}" / f"file-{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
        total += size
    return total


class Rclone:
    def __init__(self, binary: str, s3: S3Settings) -> None:
        secret = s3.s3_secret()
        self.binary = binary
        self.env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.env.update(
            {
                "RCLONE_CONFIG_LB_TYPE": "s3",
                "RCLONE_CONFIG_LB_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_LB_ENDPOINT": s3.s3_endpoint_url or "",
                "RCLONE_CONFIG_LB_ACCESS_KEY_ID": s3.s3_access_key_id or "",
                "RCLONE_CONFIG_LB_SECRET_ACCESS_KEY": secret.get_secret_value() if secret else "",
                "RCLONE_CONFIG_LB_FORCE_PATH_STYLE": "true",
            }
        )
        self.peak_rss_mb = 0.0

    def run(self, *args: str) -> float:
        started = time.monotonic()
        proc = subprocess.Popen([self.binary, *args], env=self.env, stderr=subprocess.PIPE)
        _, err = proc.communicate()
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise RuntimeError(f"rclone {' '.join(args)} failed: {err.decode()[-2000:]}")
        self.peak_rss_mb = max(
            self.peak_rss_mb, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        )
        return seconds


async def ours(s3: S3Settings, root: Path, state: Path, changes: int) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/files/"
    spec = ClusterSpec.model_validate(
        {
            "name": "bench",
            "nodes": [{"name": "node1", "host": "127.0.0.1"}],
            "filesets": [
                {
                    "name": "files",
                    "root": str(root),
                    "prefix": prefix,
                    "placement": [{"node": "node1"}],
                }
            ],
        }
    )
    fileset = spec.filesets[0]
    defaults = FilesyncSettings()
    synced: list[tuple[float, FileSynced]] = []

    async def publish(event: Envelope) -> None:
        if isinstance(event, FileSynced):
            synced.append((time.monotonic(), event))

    pool = ThreadPoolExecutor(defaults.filesync_concurrency)
    store = SetStore(make_light_s3_client(s3, bulk=True), BUCKET, prefix)
    worker = SetWorker(
        spec,
        fileset,
        fileset.placement[0],
        store=store,
        state_dir=state,
        pool=pool,
        source=Source(service="filesync", instance="bench"),
        publish=publish,
        timing=Timing(scan_interval=3600, debounce_ms=defaults.filesync_debounce_ms),
    )
    started = time.monotonic()
    running = asyncio.create_task(worker.run())
    first = await eventually(lambda: synced, timeout=3600, what="the initial sync", interval=0.05)
    initial = first[0][0] - started
    await asyncio.sleep(1)  # the watcher settles on the tree

    noops = []
    for _ in range(3):
        t0 = time.monotonic()
        await worker.sync_now()
        noops.append(time.monotonic() - t0)

    files = sorted(p for p in root.rglob("*.bin"))
    seen = len(synced)
    for path in files[:: max(1, len(files) // changes)][:changes]:
        path.write_bytes(os.urandom(path.stat().st_size))
    written = time.monotonic()

    def copied() -> bool:
        return sum(e.files_copied for _, e in synced[seen:]) >= changes

    await eventually(copied, timeout=120, what="the changed files synced", interval=0.005)
    latency = synced[-1][0] - written

    manifest = store.read_manifest("bench", "files")
    index = Index(state / "bench" / "files" / "index.sqlite")
    t0 = time.monotonic()
    fast = check(root, store, index, pool, manifest.entries)
    check_index_s = time.monotonic() - t0
    t0 = time.monotonic()
    deep = check(root, store, index, pool, manifest.entries, rehash=True)
    check_s = time.monotonic() - t0
    if not (fast.ok and deep.ok):
        raise RuntimeError(
            f"the check found differences: {fast.differences()}, {deep.differences()}"
        )
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    worker.close()
    pool.shutdown()
    return {
        "initial_s": round(initial, 2),
        "noop_resync_s": round(min(noops), 3),
        "change_latency_s": round(latency, 3),
        "check_s": round(check_s, 2),
        "check_index_s": round(check_index_s, 3),
    }


def rclone_runs(rclone: Rclone, root: Path, changes: int) -> dict[str, float]:
    target = f"lb:{BUCKET}/bench-rclone-{uuid.uuid4().hex[:8]}"
    initial = rclone.run("sync", str(root), target)
    noop = rclone.run("sync", str(root), target)
    files = sorted(p for p in root.rglob("*.bin"))
    for path in files[1 :: max(1, len(files) // changes)][:changes]:
        path.write_bytes(os.urandom(path.stat().st_size))
    changed = rclone.run("sync", str(root), target)
    checked = rclone.run("check", str(root), target)
    return {
        "initial_s": round(initial, 2),
        "noop_resync_s": round(noop, 2),
        "changed_resync_s": round(changed, 2),
        "check_s": round(checked, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--changes", type=int, default=10)
    parser.add_argument("--start", action="store_true", help="start a throwaway SeaweedFS")
    parser.add_argument("--no-rclone", action="store_true", help="ours only (development)")
    args = parser.parse_args()
    bound_malloc()  # as the service's entry point does
    base = Path(tempfile.mkdtemp(prefix="lifeboat-bench-files-"))
    server = None
    try:
        if args.start:
            creds = S3Credentials("bench", secrets.token_urlsafe(16))
            ports = S3Ports.free()
            server = SeaweedS3(base / "s3", ports, creds, log_file=base / "s3.log")
            server.start(buckets=(BUCKET,))
            s3 = server.settings()
        else:
            s3 = S3Settings()
            ensure_buckets(make_light_s3_client(s3), (BUCKET,))
        rclone = Rclone(ensure_rclone(), s3)
        root = base / "files"
        total = make_files(root, args.files)
        ref = (
            {"initial_s": 1.0, "check_s": 1.0}
            if args.no_rclone
            else rclone_runs(rclone, root, args.changes)
        )
        mine = asyncio.run(ours(s3, root, base / "state", args.changes))
        print(
            json.dumps(
                {
                    "files": args.files,
                    "bytes": total,
                    "initial_ratio_vs_rclone": round(mine["initial_s"] / ref["initial_s"], 3),
                    "noop_resync_s": mine["noop_resync_s"],
                    "change_latency_s": mine["change_latency_s"],
                    "check_ratio_vs_rclone": round(mine["check_s"] / ref["check_s"], 3),
                    "peak_rss_mb": round(
                        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                    ),
                    "filesync": mine,
                    "rclone": {**ref, "peak_rss_mb": round(rclone.peak_rss_mb, 1)},
                }
            )
        )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
