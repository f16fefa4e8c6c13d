"""The presigned WebSocket path (elf_async.dataplane.sigv4): botocore's SigV4 query signing of
``GET /mqtt`` for iotdevicegateway, checked against botocore's signer and against the
signature computed by hand as AWS documents it; the session token appended after signing."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from urllib.parse import parse_qsl, quote, urlsplit

import botocore.auth
import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from elf_async.dataplane.sigv4 import EXPIRES_S, SERVICE, SigningKeys, presigned_path

HOST = "abc123-ats.iot.eu-west-1.amazonaws.com"
REGION = "eu-west-1"
AT = dt.datetime(2026, 5, 1, 12, 0, 0)
ACCESS, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FwoGZXIvYXdzEJr//////////wEaDM+session/token=="


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: AT)


def _botocore(token: str | None) -> str:
    request = AWSRequest(method="GET", url=f"https://{HOST}/mqtt")
    SigV4QueryAuth(Credentials(ACCESS, SECRET, token), SERVICE, REGION, EXPIRES_S).add_auth(request)
    url = urlsplit(request.url)
    return f"{url.path}?{url.query}"


def _by_hand(query: list[tuple[str, str]]) -> str:
    """The signature of ``GET /mqtt`` with `query` (X-Amz-Signature left out), step by step."""
    canonical_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query)
    )
    canonical = (
        f"GET\n/mqtt\n{canonical_query}\nhost:{HOST}\n\nhost\n" + hashlib.sha256(b"").hexdigest()
    )
    stamp = AT.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{AT:%Y%m%d}/{REGION}/{SERVICE}/aws4_request"
    to_sign = (
        f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n" + hashlib.sha256(canonical.encode()).hexdigest()
    )
    key = ("AWS4" + SECRET).encode()
    for part in (f"{AT:%Y%m%d}", REGION, SERVICE, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_without_a_token_the_path_is_botocores_presigned_url() -> None:
    path = presigned_path(host=HOST, region=REGION, keys=SigningKeys(ACCESS, SECRET))
    assert path == _botocore(None)
    query = dict(parse_qsl(urlsplit(path).query))
    assert query["X-Amz-Credential"] == f"{ACCESS}/20260501/{REGION}/iotdevicegateway/aws4_request"
    assert query["X-Amz-Date"] == "20260501T120000Z"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert "X-Amz-Security-Token" not in query


def test_the_signature_is_the_one_aws_documents() -> None:
    path = presigned_path(host=HOST, region=REGION, keys=SigningKeys(ACCESS, SECRET, TOKEN))
    pairs = parse_qsl(urlsplit(path).query)
    signed = [(k, v) for k, v in pairs if k not in ("X-Amz-Signature", "X-Amz-Security-Token")]
    assert dict(pairs)["X-Amz-Signature"] == _by_hand(signed)


def test_the_session_token_is_appended_after_signing() -> None:
    path = presigned_path(host=HOST, region=REGION, keys=SigningKeys(ACCESS, SECRET, TOKEN))
    assert path == _botocore(None) + "&X-Amz-Security-Token=" + quote(TOKEN, safe="")
    assert path.rsplit("&", 1)[0].rsplit("&", 1)[1].startswith("X-Amz-Signature=")
    # botocore alone would sign the token into the canonical query: another signature
    signed_in = dict(parse_qsl(urlsplit(_botocore(TOKEN)).query))["X-Amz-Signature"]
    assert signed_in != dict(parse_qsl(urlsplit(path).query))["X-Amz-Signature"]
    assert dict(parse_qsl(urlsplit(path).query))["X-Amz-Security-Token"] == TOKEN


def test_each_connection_is_signed_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = SigningKeys(ACCESS, SECRET)
    first = presigned_path(host=HOST, region=REGION, keys=keys)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: AT + dt.timedelta(seconds=1))
    assert presigned_path(host=HOST, region=REGION, keys=keys) != first
