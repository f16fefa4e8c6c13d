"""What a per-thing mutual-TLS connect costs the client on two OpenSSL builds, step by step.

Issue 14 asks for <= 2 ms of client CPU per connect with a certificate per thing. Through
CPython's `ssl` that is OpenSSL 3.0 here (the system's), whose PEM decoders and provider
look-ups are its known slow path. pyOpenSSL drives the OpenSSL that the `cryptography` wheel
bundles (4.0 here): the same connect on both, one after the other, says how much of the cost
is the OpenSSL build and so what moving the TLS layer would buy. Nothing in elf-async uses
pyOpenSSL; this only measures (install it with `pip install pyopenssl`).

Each connect: TCP, the thing's chain and key loaded onto the stack's one context, a TLS 1.3
handshake verifying the broker against the CA, CONNECT and its CONNACK. Client thread CPU
per step (`time.thread_time`), `count` connections one after the other against a fresh
mosquitto, the stacks alternated `--rounds` times.

    .venv/bin/python benchmarks/tls_stacks.py --count 300 --rounds 3 --out tls-stacks.json
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import ssl
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._harness import ClientFiles, Pki, machine
from benchmarks.connect import _connect_packet
from elf_async.local.mosquitto import Mosquitto

STEPS = ("tcp_ms", "chain_ms", "handshake_ms", "connack_ms")
Connect = Callable[[ClientFiles, str, int], tuple[Any, list[float]]]


def _tcp(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _handshake_and_connack(tls: Any, client_id: str) -> list[float]:
    """The handshake, then CONNECT and its CONNACK: thread CPU of each (either stack)."""
    clock = time.thread_time
    start = clock()
    tls.do_handshake()
    shaken = clock()
    tls.sendall(_connect_packet(client_id))
    if tls.recv(4)[:1] != b"\x20":
        raise RuntimeError(f"{client_id}: no CONNACK")
    return [shaken - start, clock() - shaken]


def cpython_ssl(ca_file: str) -> Connect:
    """CPython's `ssl` as elf-async uses it: one context, the thing's chain loaded onto it
    right before the connection is made from it."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    clock = time.thread_time

    def connect(spec: ClientFiles, host: str, port: int) -> tuple[Any, list[float]]:
        t0 = clock()
        sock = _tcp(host, port)
        t1 = clock()
        context.load_cert_chain(spec.cert, spec.key)
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        t2 = clock()
        return tls, [t1 - t0, t2 - t1, *_handshake_and_connack(tls, spec.id)]

    return connect


def py_openssl(ca_file: str) -> Connect:
    """pyOpenSSL on the `cryptography` wheel's OpenSSL: the same steps, the broker's name
    checked by OpenSSL as CPython asks it to (`X509_VERIFY_PARAM_set1_ip` for an address; the
    benchmark's broker is 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from OpenSSL import SSL
    from OpenSSL._util import lib

    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.load_verify_locations(ca_file)
    context.set_verify(SSL.VERIFY_PEER, None)
    context.set_options(SSL.OP_NO_COMPRESSION)
    clock = time.thread_time

    def connect(spec: ClientFiles, host: str, port: int) -> tuple[Any, list[float]]:
        t0 = clock()
        sock = _tcp(host, port)
        t1 = clock()
        tls = SSL.Connection(context, sock)  # a used context takes no new chain: per connection
        tls.use_certificate(x509.load_pem_x509_certificate(Path(spec.cert).read_bytes()))
        tls.use_privatekey(load_pem_private_key(Path(spec.key).read_bytes(), None))  # type: ignore[arg-type]
        tls.set_connect_state()
        tls.set_tlsext_host_name(host.encode())
        # The broker's address checked, as CPython does (no public pyOpenSSL call for it).
        param = lib.SSL_get0_param(tls._ssl)  # noqa: SLF001
        address = ipaddress.ip_address(host).packed
        if not lib.X509_VERIFY_PARAM_set1_ip(param, address, len(address)):
            raise RuntimeError("X509_VERIFY_PARAM_set1_ip failed")
        t2 = clock()
        steps = [t1 - t0, t2 - t1, *_handshake_and_connack(tls, spec.id)]
        version = tls.get_protocol_version_name()
        if version != "TLSv1.3":
            raise RuntimeError(f"{spec.id}: {version}, not TLS 1.3")
        return tls, steps

    return connect


STACKS: dict[str, Callable[[str], Connect]] = {"cpython_ssl": cpython_ssl, "pyopenssl": py_openssl}


def one_round(stack: str, pki: Pki, clients: list[ClientFiles], workdir: Path) -> dict[str, Any]:
    broker = Mosquitto.start(directory=workdir / stack, ca=pki.ca)
    connect = STACKS[stack](str(pki.ca_file))
    spent = [0.0] * len(STEPS)
    keep: list[Any] = []
    try:
        for spec in clients:
            tls, steps = connect(spec, broker.host, broker.port)
            keep.append(tls)
            spent = [a + b for a, b in zip(spent, steps, strict=True)]
    finally:
        for tls in keep:
            tls.close()
        broker.stop()
    row = {k: round(1000 * v / len(clients), 3) for k, v in zip(STEPS, spent, strict=True)}
    return {
        "stack": stack,
        "connections": len(clients),
        **row,
        "total_ms": round(sum(row.values()), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--key-type", choices=["ec", "rsa"], default="ec")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from OpenSSL import SSL

    pki = Pki()
    clients = pki.clients(args.count, args.key_type)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="elf-tls-stacks-") as tmp:
        for number in range(args.rounds):
            for stack in STACKS:
                row = one_round(stack, pki, clients, Path(tmp) / f"r{number}")
                rows.append({"round": number + 1, **row})
                print(json.dumps(rows[-1]))
    medians = {
        stack: {
            key: round(statistics.median(r[key] for r in rows if r["stack"] == stack), 3)
            for key in (*STEPS, "total_ms")
        }
        for stack in STACKS
    }
    result = {
        "benchmark": "tls_stacks",
        "machine": machine(),
        "command": "python benchmarks/tls_stacks.py "
        + f"--count {args.count} --rounds {args.rounds} --key-type {args.key_type}",
        "openssl": {
            "cpython_ssl": ssl.OPENSSL_VERSION,
            "pyopenssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        },
        "key_type": args.key_type,
        "rows": rows,
        "medians": medians,
        "ratio_total_pyopenssl_over_cpython": round(
            medians["pyopenssl"]["total_ms"] / medians["cpython_ssl"]["total_ms"], 3
        ),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(medians, indent=2))


if __name__ == "__main__":
    main()
