"""The AWS credentials a WebSocket connection is signed with (``--transport wss``).

The data plane signs (elf_async.dataplane.sigv4) with whatever `AwsKeys.keys` gives at each
connect: the usual credential chain, or --profile, resolved by botocore in the process that
signs (a `send --workers` process resolves its own: this pickles as the profile's name).
Temporary credentials are refreshed by botocore as they near their expiry; signing itself needs
no network.
"""

from __future__ import annotations

import re
from typing import Any

from elf_async.dataplane.sigv4 import SigningKeys
from elf_async.errors import UsageError

NO_CREDENTIALS = (
    "--transport wss signs with AWS credentials and none were found: configure a profile "
    "(aws configure), set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or pass --profile"
)
_REGION_IN_HOST = re.compile(r"\.iot\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")


class AwsKeys:
    """The AWS credential chain (or `profile`), resolved once per process, read per connect."""

    def __init__(self, profile: str | None) -> None:
        self.profile = profile
        self._credentials: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"profile": self.profile}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.profile, self._credentials = state["profile"], None

    def keys(self) -> SigningKeys:
        """The keys now (botocore refreshes temporary ones); `UsageError` when there are none."""
        if self._credentials is None:
            # Imported here: botocore costs a command that never signs ~0.3 s to start.
            import botocore.exceptions
            import botocore.session

            try:
                session = botocore.session.Session(profile=self.profile)
                self._credentials = session.get_credentials()
            except botocore.exceptions.ProfileNotFound as exc:
                raise UsageError(
                    f"--profile {self.profile}: no such profile in the AWS config"
                ) from exc
            if self._credentials is None:
                raise UsageError(NO_CREDENTIALS)
        frozen = self._credentials.get_frozen_credentials()
        return SigningKeys(frozen.access_key, frozen.secret_key, frozen.token)


def signing_region(host: str, fallback: str) -> str:
    """The region a SigV4 signature for `host` names: the one in an AWS IoT endpoint's name
    (``<prefix>-ats.iot.<region>.amazonaws.com``), else `fallback` (the command's region)."""
    match = _REGION_IN_HOST.search(host)
    return match.group(1) if match else fallback
