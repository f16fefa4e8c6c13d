"""The SigV4 presigned path of an MQTT-over-WebSocket connection to AWS IoT.

AWS IoT takes a WebSocket's credentials in the query of ``GET /mqtt``, signed with SigV4 for
the service ``iotdevicegateway``. botocore's query signer (`SigV4QueryAuth`) does the signing;
what is ours is the request it signs (host, ``/mqtt``) and where the session token goes: AWS
IoT wants ``X-Amz-Security-Token`` appended *after* signing, outside the canonical query
(signed in, as botocore would, the broker refuses the connection). Each connection is signed
afresh: a presigned path is only good for `EXPIRES_S` and temporary credentials rotate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote, urlsplit

SERVICE = "iotdevicegateway"
PATH = "/mqtt"
EXPIRES_S = 86400  # as AWS IoT's own device SDKs sign; the connection itself lasts up to 24 h


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """AWS credentials at one moment: an access key, its secret, a session token if temporary."""

    access_key: str
    secret_key: str
    token: str | None = None


class KeySource(Protocol):
    """Where a connection's keys come from (the AWS credential chain, resolved in the control
    plane's side of the code); it must pickle, for `send --workers` processes."""

    def keys(self) -> SigningKeys: ...


def presigned_path(*, host: str, region: str, keys: SigningKeys) -> str:
    """``/mqtt?X-Amz-...`` for `host`, signed now; the session token (if any) appended after
    the signature, never inside the canonical query."""
    # Imported here: botocore costs a command that never signs ~0.3 s to start.
    from botocore.auth import SigV4QueryAuth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method="GET", url=f"https://{host}{PATH}")
    unsigned_token = Credentials(keys.access_key, keys.secret_key)  # token=None: not signed in
    SigV4QueryAuth(unsigned_token, SERVICE, region, expires=EXPIRES_S).add_auth(request)
    url = urlsplit(request.url)
    path = f"{url.path}?{url.query}"
    if keys.token:
        path += "&X-Amz-Security-Token=" + quote(keys.token, safe="")
    return path
