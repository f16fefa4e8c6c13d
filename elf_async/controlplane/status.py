"""The fleet as the ledger knows it, as one JSON-ready dict (for `status` and scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elf_async.controlplane.fleet import (
    DEVICES_KEY,
    PER_THING,
    SHARED,
    identity_mode,
    per_thing_topics,
)
from elf_async.controlplane.ledger import Ledger


def fleet_status(state_dir: Path) -> dict[str, Any]:
    """`exists` is false without a ledger, and for a ledger that records no fleet at all (an
    older elf-async left one after a create that failed before its first AWS call):
    `empty_ledger` says which."""
    if not Ledger.exists(state_dir):
        return {"exists": False, "state_dir": str(state_dir)}
    with Ledger.open(state_dir) as ledger:
        meta = ledger.meta()
        records = ledger.things()
        if "fleet_id" not in meta and not records and not ledger.fleet_resources():
            return {"exists": False, "state_dir": str(state_dir), "empty_ledger": True}
        failed = {r.name: r.error_code for r in records if r.status == "failed"}
        return {
            "exists": True,
            "state_dir": str(state_dir),
            "fleet_id": meta.get("fleet_id"),
            "region": meta.get("region"),
            "account": meta.get("account"),
            "profile": meta.get("profile"),
            "endpoint_url": meta.get("endpoint_url"),
            "mqtt_endpoint": meta.get("mqtt_endpoint"),
            "prefix": meta.get("prefix"),
            "cert_mode": meta.get("cert_mode"),
            "key_type": meta.get("key_type"),
            "topic_root": meta.get("topic_root"),
            "identity": identity_mode(meta) if "fleet_id" in meta else None,
            # A shared-identity fleet's virtual devices (its one certificate is in `things`).
            "devices": int(meta[DEVICES_KEY]) if DEVICES_KEY in meta else None,
            "topic_scope": (PER_THING if per_thing_topics(meta) else SHARED)
            if "fleet_id" in meta
            else None,
            "keys_dir": str((state_dir / "certs").resolve()),
            "things": {
                "total": len(records),
                "by_state": ledger.count_by_status(),
                "failed": failed,
            },
            "fleet_resources": [
                {"kind": r.kind, "name": r.name, "state": r.state, "arn": r.arn}
                for r in ledger.fleet_resources()
            ],
        }
