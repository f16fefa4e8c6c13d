"""The fleet as the ledger knows it, as one JSON-ready dict (for `status` and scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from elf_async.controlplane.fleet import (
    DEVICES_KEY,
    PER_THING,
    SHARED,
    SHARED_IDENTITY,
    identity_mode,
    is_controller,
    per_thing_topics,
    shared_identity_name,
)
from elf_async.controlplane.ledger import SHARED_STEPS, Ledger, ThingRecord


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
        controllers = [r for r in records if is_controller(r.name)]
        records = [r for r in records if not is_controller(r.name)]
        shared = _shared_certificate(meta, records)
        if shared is not None:
            records = []  # the certificate's row: shown as `shared_certificate`, not a thing
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
            "shared_certificate": shared,
            # `create --controller`: the command controller's certificate (null: none).
            "controller": _identity(controllers[0]) if controllers else None,
            "things": {
                "total": len(records),
                "by_state": _by_status(records),
                "failed": failed,
            },
            "fleet_resources": [
                {"kind": r.kind, "name": r.name, "state": r.state, "arn": r.arn}
                for r in ledger.fleet_resources()
            ],
        }


def _by_status(records: list[ThingRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


def _identity(record: ThingRecord) -> dict[str, Any]:
    """A certificate-only row (a controller's): ready once it exists with its policy."""
    state = "ready" if record.ready_for(SHARED_STEPS) else record.status
    described = {"name": record.name, "state": state, "id": record.cert_id}
    return described | ({"error": record.error_code} if record.error_code else {})


def _shared_certificate(meta: dict[str, str], records: list[ThingRecord]) -> dict[str, Any] | None:
    """A shared-identity fleet's one certificate: its state (ready once it exists with the
    policy attached), its id, and why it failed; None for a fleet of things."""
    if identity_mode(meta) != SHARED_IDENTITY or "prefix" not in meta:
        return None
    name = shared_identity_name(meta["prefix"])
    record = next((r for r in records if r.name == name), None)
    if record is None:
        return {"name": name, "state": "pending", "id": None}
    return _identity(record)
