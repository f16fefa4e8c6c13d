"""Provisioning throughput: elf-async `create` + `clean` against moto, side by side with the
seed's way (a sequential boto3 loop making the same calls), in one run.

Scenarios (N things each, default 200):
- unpaced: moto as it is (no quotas), elf-async with its pacing lifted (--api-rate ...=1000/s)
  against the sequential loop: what concurrency buys when the server is the only limit.
- quotas: the throttling proxy (tests/support/throttle_proxy.py) enforcing AWS's default quotas per
  API in front of moto; elf-async with its default pacing against the sequential loop
  (botocore standard retries): how close each gets to the quotas, and how often it is throttled.

Prints JSON: things/s for create and clean, ratios to sequential, and for the quota scenario
the achieved rate of the bottleneck API (the lowest quota) as a fraction of that quota
(target >= 0.9).

    .venv/bin/python benchmarks/provision.py [--things 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

ROOT = Path(__file__).resolve().parent.parent
PROXY = ROOT / "tests" / "support" / "throttle_proxy.py"
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-west-2",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
# AWS's default quotas (shared/aws-iot-facts.md) keyed as the proxy names APIs.
QUOTAS = {
    "POST /keys-and-certificate": ("CreateKeysAndCertificate", 10.0),
    "POST /things": ("CreateThing", 15.0),
    "PUT /things/principals": ("AttachThingPrincipal", 15.0),
    "PUT /target-policies": ("AttachPolicy", 15.0),
    "POST /policies": ("CreatePolicy", 10.0),
    "POST /target-policies": ("DetachPolicy", 15.0),
    "PUT /certificates": ("UpdateCertificate", 10.0),
    "DELETE /things/principals": ("DetachThingPrincipal", 15.0),
    "DELETE /things": ("DeleteThing", 15.0),
    "DELETE /certificates": ("DeleteCertificate", 10.0),
    "DELETE /policies": ("DeletePolicy", 10.0),
}
UNPACED = [f"{name}=1000/s" for name, _ in QUOTAS.values()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(port)


def start(args: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV}
    )
    wait_for(port, process)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def elf_async(endpoint: str, state_dir: Path, *args: str) -> tuple[float, dict[str, Any]]:
    """One elf-async command as a user runs it; returns (seconds, its --json summary)."""
    command = [sys.executable, "-m", "elf_async", "-q", "--state-dir", str(state_dir)]
    command += ["--endpoint-url", endpoint, *args, "--json"]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV})
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}")
    return elapsed, json.loads(done.stdout)


def sequential(endpoint: str, things: int, tag: str) -> dict[str, float]:
    """The seed's way: one call at a time, boto3 with its standard retries."""
    iot = boto3.client(
        "iot",
        endpoint_url=endpoint,
        region_name="us-west-2",
        config=Config(retries={"mode": "standard", "max_attempts": 10}),
    )
    policy = f"seq-{tag}-policy"
    started = time.perf_counter()
    iot.create_policy(policyName=policy, policyDocument='{"Version":"2012-10-17","Statement":[]}')
    created = []
    for i in range(things):
        name = f"seq-{tag}-{i:05d}"
        cert = iot.create_keys_and_certificate(setAsActive=True)
        iot.create_thing(thingName=name)
        iot.attach_thing_principal(thingName=name, principal=cert["certificateArn"])
        iot.attach_policy(policyName=policy, target=cert["certificateArn"])
        created.append((name, cert["certificateArn"], cert["certificateId"]))
    create_s = time.perf_counter() - started
    started = time.perf_counter()
    for name, arn, cert_id in created:
        iot.detach_policy(policyName=policy, target=arn)
        iot.update_certificate(certificateId=cert_id, newStatus="INACTIVE")
        iot.detach_thing_principal(thingName=name, principal=arn)
        iot.delete_thing(thingName=name)
        iot.delete_certificate(certificateId=cert_id)
    iot.delete_policy(policyName=policy)
    clean_s = time.perf_counter() - started
    return {"create_things_per_s": things / create_s, "clean_things_per_s": things / clean_s}


def proxy_stats(url: str) -> dict[str, dict[str, int]]:
    with urllib.request.urlopen(f"{url}/_proxy/stats", timeout=10) as response:
        return dict(json.load(response))


def run_elf(endpoint: str, things: int, workdir: Path, extra: list[str]) -> dict[str, Any]:
    state = Path(tempfile.mkdtemp(dir=workdir))
    # The same calls as the boto3 loop: AWS makes the keys.
    create_s, created = elf_async(
        endpoint, state, "create", str(things), "--cert-mode", "aws", *extra
    )
    clean_s, cleaned = elf_async(endpoint, state, "clean", *extra)
    if created["created"] != things or cleaned["removed"] != things:
        raise RuntimeError(f"incomplete run: {created} {cleaned}")
    return {
        "create_things_per_s": things / create_s,
        "clean_things_per_s": things / clean_s,
        "create_api": created["api"],
        "clean_api": cleaned["api"],
    }


def bottleneck(api: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The API with the lowest quota bounds the run: how close it came to that quota."""
    quotas = dict(QUOTAS.values())
    used = [(quotas[name], -row["calls"], name) for name, row in api.items() if name in quotas]
    _, _, name = min(used)
    return {
        "api": name,
        "quota_per_s": quotas[name],
        "achieved_per_s": api[name]["achieved_per_s"],
        "achieved_fraction_of_quota": round(api[name]["achieved_per_s"] / quotas[name], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--things", type=int, default=200)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    os.environ.update(ENV)
    n = args.things
    moto_port, proxy_port = free_port(), free_port()
    moto = start(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)], moto_port
    )
    moto_url = f"http://127.0.0.1:{moto_port}"
    boto3.client("iot", endpoint_url=moto_url, region_name="us-west-2").list_things()  # warm router
    rates = [arg for key, (_, quota) in QUOTAS.items() for arg in ("--rate-for", f"{key}={quota}")]
    proxy = start(
        [sys.executable, str(PROXY), "--target", moto_url, "--port", str(proxy_port), *rates,
         "--max-seconds", "3600"],
        proxy_port,
    )  # fmt: skip
    proxy_url = f"http://127.0.0.1:{proxy_port}"
    try:
        with tempfile.TemporaryDirectory() as work:
            workdir = Path(work)
            seq_unpaced = sequential(moto_url, n, "u")
            elf_unpaced = run_elf(moto_url, n, workdir, [f"--api-rate={r}" for r in UNPACED])
            before = proxy_stats(proxy_url)
            elf_quota = run_elf(proxy_url, n, workdir, [])
            after_elf = proxy_stats(proxy_url)
            seq_quota = sequential(proxy_url, n, "q")
            after_seq = proxy_stats(proxy_url)
    finally:
        stop(proxy)
        stop(moto)

    def throttled(a: dict[str, dict[str, int]], b: dict[str, dict[str, int]]) -> int:
        return sum(v["throttled"] - a.get(k, {}).get("throttled", 0) for k, v in b.items())

    result = {
        "benchmark": "provision",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "things": n,
        "unpaced": {
            "elf_async": {k: v for k, v in elf_unpaced.items() if not k.endswith("_api")},
            "sequential_boto3": seq_unpaced,
            "ratio_create": elf_unpaced["create_things_per_s"] / seq_unpaced["create_things_per_s"],
            "ratio_clean": elf_unpaced["clean_things_per_s"] / seq_unpaced["clean_things_per_s"],
        },
        "quotas": {
            "elf_async": {
                "create_things_per_s": elf_quota["create_things_per_s"],
                "clean_things_per_s": elf_quota["clean_things_per_s"],
                "throttled_responses": throttled(before, after_elf),
                "create_bottleneck_api": bottleneck(elf_quota["create_api"]),
                "clean_bottleneck_api": bottleneck(elf_quota["clean_api"]),
            },
            "sequential_boto3": {
                **seq_quota,
                "throttled_responses": throttled(after_elf, after_seq),
            },
            "ratio_create": elf_quota["create_things_per_s"] / seq_quota["create_things_per_s"],
            "ratio_clean": elf_quota["clean_things_per_s"] / seq_quota["clean_things_per_s"],
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
