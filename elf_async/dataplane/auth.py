"""How a connection proves who it is, besides the X.509 certificate of each thing.

- `SigV4`: MQTT over WebSockets (``--transport wss``), the AWS credentials' signature in the
  upgrade's path (elf_async.dataplane.sigv4), made afresh for each connection.
- `CustomAuth`: an AWS IoT custom authorizer (``--auth custom:NAME``) over TLS on 443 with
  ALPN ``mqtt`` and no client certificate: the authorizer's name (and a token, if any) in the
  MQTT username's query, as AWS documents for MQTT; a password, if any, in the password field.

Both pickle (for `send --workers` processes); neither is checked by the local mosquitto the
way AWS checks it (see README: the local stack checks a custom authorizer's username and
password against a password file, and does not check a SigV4 signature at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlencode

from elf_async.dataplane.sigv4 import KeySource, presigned_path
from elf_async.errors import UsageError

Transport = Literal["mqtts", "wss"]
AuthKind = Literal["x509", "sigv4", "custom"]
TRANSPORTS: tuple[Transport, ...] = ("mqtts", "wss")
AUTHORIZER_NAME = "x-amz-customauthorizer-name"
AUTHORIZER_SIGNATURE = "x-amz-customauthorizer-signature"
CUSTOM_ALPN = "mqtt"  # custom authentication on 443 (not x-amzn-mqtt-ca, which is for X.509)


@dataclass(frozen=True, slots=True)
class SigV4:
    """Sign each WebSocket upgrade with the keys `keys` gives at that moment."""

    region: str
    keys: KeySource

    def path(self, host: str) -> str:
        """A fresh presigned ``/mqtt?...`` for `host`."""
        return presigned_path(host=host, region=self.region, keys=self.keys.keys())


@dataclass(frozen=True, slots=True)
class CustomAuth:
    """A custom authorizer and what each connection hands it."""

    name: str
    username: str | None = None  # default: the client id
    password: str | None = None
    token: str | None = None
    token_key_name: str | None = None  # the authorizer's token key name (with `token`)
    token_signature: str | None = None  # for an authorizer with token signing on

    def username_for(self, client_id: str) -> str:
        """``<username>?x-amz-customauthorizer-name=NAME[&x-amz-customauthorizer-signature=S]
        [&<token key name>=TOKEN]``: the query values percent-encoded."""
        params = {AUTHORIZER_NAME: self.name}
        if self.token is not None and self.token_key_name is not None:
            if self.token_signature is not None:
                params[AUTHORIZER_SIGNATURE] = self.token_signature
            params[self.token_key_name] = self.token
        query = urlencode(params, quote_via=lambda text, *_: quote(text, safe=""))
        return f"{self.username or client_id}?{query}"


Auth = SigV4 | CustomAuth | None
"""None: each thing's own X.509 certificate (mutual TLS)."""


def label(transport: Transport, auth: Auth) -> str:
    """What the report says: ``mqtts+x509``, ``wss+sigv4``, ``mqtts+custom``."""
    kind = "x509" if auth is None else "sigv4" if isinstance(auth, SigV4) else "custom"
    return f"{transport}+{kind}"


_AUTHORIZER = re.compile(r"[\w=,@-]{1,128}")  # AWS IoT's pattern for an authorizer's name


def parse_access(
    *,
    transport: str,
    auth: str | None,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    token_key_name: str | None = None,
    token_signature: str | None = None,
) -> tuple[Transport, AuthKind, CustomAuth | None]:
    """--transport and --auth with their credentials, checked: the transport, the kind of
    authentication, and the custom authorizer's part. Raises `UsageError`, one line each."""
    chosen = transport.strip().lower()
    transports: dict[str, Transport] = {"mqtts": "mqtts", "wss": "wss"}
    kinds: dict[str, AuthKind] = {"x509": "x509", "sigv4": "sigv4", "custom": "custom"}
    if chosen == "ws":
        raise UsageError("--transport ws: AWS IoT takes MQTT over WebSocket only with TLS: use wss")
    if chosen not in TRANSPORTS:
        raise UsageError(f"--transport {transport}: choose mqtts or wss")
    kind = (auth or ("sigv4" if chosen == "wss" else "x509")).strip()
    name = None
    if kind.lower().startswith("custom:"):
        name = kind.split(":", 1)[1].strip()
        if not name:
            raise UsageError("--auth custom: needs the authorizer's name: --auth custom:NAME")
        if not _AUTHORIZER.fullmatch(name):
            raise UsageError(f"--auth {kind}: an authorizer's name is 1-128 of [a-zA-Z0-9_=,@-]")
        kind = "custom"
    if kind not in ("x509", "sigv4", "custom"):
        raise UsageError(f"--auth {auth}: choose x509, sigv4 (with --transport wss) or custom:NAME")
    if chosen == "wss" and kind != "sigv4":
        raise UsageError(
            f"--auth {auth} with --transport wss: a WebSocket connection is signed with SigV4 "
            "(AWS credentials), drop --auth"
        )
    if chosen == "mqtts" and kind == "sigv4":
        raise UsageError("--auth sigv4 signs a WebSocket upgrade: add --transport wss")
    given = {
        "--username": username,
        "--password": password,
        "--token": token,
        "--token-key-name": token_key_name,
        "--token-signature": token_signature,
    }
    if name is None:
        extra = next((option for option, value in given.items() if value is not None), None)
        if extra is not None:
            raise UsageError(f"{extra} is for a custom authorizer: add --auth custom:NAME")
        return transports[chosen], kinds[kind], None
    if token is not None and token_key_name is None:
        raise UsageError("--token needs --token-key-name (the authorizer's token key name)")
    if token is None and (token_key_name is not None or token_signature is not None):
        option = "--token-key-name" if token_key_name is not None else "--token-signature"
        raise UsageError(f"{option} needs --token")
    if token is None and password is None:
        raise UsageError(
            f"--auth custom:{name} needs credentials for the authorizer: --token (with "
            "--token-key-name) or --password (with --username)"
        )
    custom = CustomAuth(
        name=name,
        username=username,
        password=password,
        token=token,
        token_key_name=token_key_name,
        token_signature=token_signature,
    )
    return transports[chosen], "custom", custom
