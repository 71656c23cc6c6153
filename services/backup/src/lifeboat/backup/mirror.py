"""The catalogue and the WAL archive's status, mirrored into JetStream KV for readers that do
not talk to S3 (the gateway, the CLI): services meet on NATS and KV only.

S3 stays the truth: the mirror is rewritten from the manifests after every backup, delete
and retention pass, so a lost bucket is rebuilt by the next one. Bucket `lifeboat_backups`,
keys `<cluster>` (the listed backups, newest first, each its manifest without the per-table
counts, and its latest verification) and `<cluster>.wal` (the latest `wal.status`).
"""

from __future__ import annotations

import json
from typing import Any

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from lifeboat.backup.catalogue import Listed
from lifeboat.common.events import WalStatus
from lifeboat.common.kv import open_bucket
from lifeboat.common.subjects import BACKUPS_BUCKET


def summary(listed: list[Listed]) -> dict[str, Any]:
    backups = []
    for item in sorted(listed, key=lambda i: i.manifest.stopped_at, reverse=True):
        entry = item.manifest.model_dump(mode="json", exclude={"table_counts"})
        entry["tables"] = len(item.manifest.table_counts)
        entry["verification"] = (
            None if item.verification is None else item.verification.model_dump(mode="json")
        )
        entry["listed_status"] = (
            "unverified"
            if item.verification is None
            else ("verified" if item.verification.ok else "failed_verification")
        )
        backups.append(entry)
    return {"backups": backups}


class Mirror:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> Mirror:
        return cls(await open_bucket(js, BACKUPS_BUCKET))

    async def catalogue(self, cluster: str, listed: list[Listed]) -> None:
        await self.kv.put(cluster, json.dumps(summary(listed)).encode())

    async def wal(self, status: WalStatus) -> None:
        await self.kv.put(f"{status.cluster}.wal", status.model_dump_json().encode())
