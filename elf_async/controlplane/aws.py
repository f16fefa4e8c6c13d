"""The control-plane transport: one aioboto3 IoT client, each API paced and retried on its own.

IoT quotas are per API, so each operation has its own `RateLimiter` set just under
AWS's default quota. Throttling slows that API down and is retried without failing
anything; transient faults are retried a bounded number of times; every other error
surfaces as an `AwsError` carrying the AWS error code.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from elf_async.config import Target
from elf_async.errors import AccessDenied, AwsError, CredentialsError, FleetMismatch, UsageError
from elf_async.pacing import RateLimiter, backoff_delay

# aioboto3/aiobotocore/botocore take most of a second to import: they are imported where a
# control-plane call is actually made, so commands that need none (`--help`, `send` with a
# known endpoint, `local status`...) start fast. tests/test_send.py guards this.
if TYPE_CHECKING:
    import aioboto3
    from botocore.exceptions import ClientError

# AWS's default quotas in calls per second (see aws-iot-facts). Adjustable per account:
# `--api-rate NAME=RATE` overrides the pacing of any of them.
AWS_DEFAULT_QUOTAS: Mapping[str, float] = {
    "CreateThing": 15,
    "DeleteThing": 15,
    "DescribeThing": 10,
    "CreateKeysAndCertificate": 10,
    "CreateCertificateFromCsr": 15,
    "RegisterCertificate": 15,
    "RegisterCACertificate": 5,
    "UpdateCACertificate": 5,
    "DeleteCACertificate": 5,
    "DescribeCertificate": 10,
    "UpdateCertificate": 10,
    "DeleteCertificate": 10,
    "ListCertificates": 10,
    "AttachThingPrincipal": 15,
    "DetachThingPrincipal": 15,
    "ListThingPrincipals": 10,
    "ListPrincipalThings": 10,
    "AttachPolicy": 15,
    "DetachPolicy": 15,
    "ListAttachedPolicies": 10,
    "ListTargetsForPolicy": 10,
    "CreatePolicy": 10,
    "GetPolicy": 10,
    "DeletePolicy": 10,
    "ListThings": 10,
    "DescribeEndpoint": 10,
}
PACING_FRACTION = 0.95  # pace just under each quota
FALLBACK_RATE = 5.0  # an API missing from the table

THROTTLE_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
TRANSIENT_CODES = frozenset(
    {
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalFailureException",
        "InternalFailure",
        "InternalException",
        "InternalServerException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
DENIED_CODES = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedException"})
NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
TRANSIENT_ATTEMPTS = 10
THROTTLE_DEADLINE_S = 900.0
NO_CREDENTIALS = (
    "no AWS credentials found: configure a profile (aws configure), set "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or use --local"
)  # a throttling storm slows a call down; only this fails it


class ControlPlane(Protocol):
    """What the create, clean and recovery engines need from AWS (tests use an in-memory one)."""

    async def call(
        self, operation: str, *, retry_codes: frozenset[str] = ..., **params: Any
    ) -> dict[str, Any]: ...

    def api_report(self) -> dict[str, dict[str, float]]:
        """Per-API figures for the summary."""
        ...


@dataclass
class ApiStats:
    calls: int = 0
    throttled: int = 0
    retried: int = 0
    failed: int = 0


@dataclass
class CallStats:
    """Per-API counters for the summary: how hard we pushed and how often AWS pushed back."""

    apis: dict[str, ApiStats] = field(default_factory=dict)

    def of(self, operation: str) -> ApiStats:
        return self.apis.setdefault(operation, ApiStats())


def default_api_rates(overrides: Mapping[str, float] | None = None) -> dict[str, float]:
    rates = {name: quota * PACING_FRACTION for name, quota in AWS_DEFAULT_QUOTAS.items()}
    rates.update(overrides or {})
    return rates


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


def snake_case(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower().replace("c_a_", "ca_")


class IotControlPlane:
    """An aioboto3 IoT client behind per-API limiters, a concurrency cap and retries (or
    another service's client: `service` names its IAM actions in errors)."""

    def __init__(
        self,
        client: Any,
        *,
        concurrency: int,
        api_rates: Mapping[str, float],
        service: str = "iot",
    ) -> None:
        self._client = client
        self._service = service
        self._slots = asyncio.Semaphore(concurrency)
        self._rates = dict(api_rates)
        self._limiters: dict[str, RateLimiter] = {}
        self._last_slowdown: dict[str, float] = {}
        self.stats = CallStats()

    def limiter(self, operation: str) -> RateLimiter:
        if operation not in self._limiters:
            rate = self._rates.get(operation, FALLBACK_RATE)
            self._limiters[operation] = RateLimiter(rate, name=operation)
        return self._limiters[operation]

    def achieved_rates(self) -> dict[str, float]:
        """Calls per second each API achieved (first to last call), for the summary."""
        return {
            name: rate
            for name, limiter in self._limiters.items()
            if (rate := limiter.achieved_rate()) is not None
        }

    async def call(
        self, operation: str, *, retry_codes: frozenset[str] = frozenset(), **params: Any
    ) -> dict[str, Any]:
        """Call `operation`, paced and retried; raise `AwsError` when it fails for good.

        `retry_codes` are error codes to retry like transient ones (e.g. the conflict that
        DetachThingPrincipal's propagation delay causes).
        """
        from botocore.exceptions import (
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        method = getattr(self._client, snake_case(operation))
        stats = self.stats.of(operation)
        limiter = self.limiter(operation)
        started = time.monotonic()
        attempt = 0
        while True:
            await limiter.acquire()
            stats.calls += 1
            try:
                async with self._slots:
                    response: dict[str, Any] = await method(**params)
            except ClientError as exc:
                code = error_code(exc)
                message = str(exc.response.get("Error", {}).get("Message", ""))
                if code in THROTTLE_CODES:
                    stats.throttled += 1
                    self._slow_down(operation, limiter)
                    if time.monotonic() - started < THROTTLE_DEADLINE_S:
                        await asyncio.sleep(backoff_delay(min(attempt, 6), base=0.2, cap=5.0))
                        attempt += 1
                        continue
                elif (code in TRANSIENT_CODES or code in retry_codes or _is_server_error(exc)) and (
                    attempt + 1 < TRANSIENT_ATTEMPTS
                ):
                    stats.retried += 1
                    await asyncio.sleep(backoff_delay(attempt, base=0.2, cap=5.0))
                    attempt += 1
                    continue
                stats.failed += 1
                if code in DENIED_CODES:
                    raise AccessDenied(operation, code, message, service=self._service) from exc
                details = {
                    k: v for k, v in exc.response.items() if k not in ("Error", "ResponseMetadata")
                }
                raise AwsError(
                    operation, code, message, service=self._service, details=details
                ) from exc
            except (TimeoutError, ConnectionError, HTTPClientError) as exc:
                if attempt + 1 < TRANSIENT_ATTEMPTS:
                    stats.retried += 1
                    await asyncio.sleep(backoff_delay(attempt, base=0.2, cap=5.0))
                    attempt += 1
                    continue
                stats.failed += 1
                raise AwsError(
                    operation, type(exc).__name__, str(exc), service=self._service
                ) from exc
            except (NoCredentialsError, PartialCredentialsError) as exc:
                raise CredentialsError(NO_CREDENTIALS) from exc
            limiter.recover()
            return response

    def api_report(self) -> dict[str, dict[str, float]]:
        """Per-API calls, throttles, retries and achieved rate, for summaries and benchmarks."""
        rates = self.achieved_rates()
        return {
            name: {
                "calls": stats.calls,
                "throttled": stats.throttled,
                "retried": stats.retried,
                "failed": stats.failed,
                "achieved_per_s": round(rates.get(name, 0.0), 3),
                "paced_at_per_s": round(self.limiter(name).configured, 3),
            }
            for name, stats in sorted(self.stats.apis.items())
        }

    def _slow_down(self, operation: str, limiter: RateLimiter) -> None:
        """At most once a second per API, so one burst of throttles is one signal."""
        now = time.monotonic()
        if now - self._last_slowdown.get(operation, 0.0) >= 1.0:
            self._last_slowdown[operation] = now
            limiter.slow_down()


def _is_server_error(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return isinstance(status, int) and status >= 500


def _session(target: Target) -> aioboto3.Session:
    import aioboto3
    from botocore.exceptions import ProfileNotFound

    try:
        return aioboto3.Session(profile_name=target.profile, region_name=target.region)
    except ProfileNotFound as exc:
        raise UsageError(f"--profile {target.profile}: no such profile in the AWS config") from exc


def configured_region(profile: str | None) -> str | None:
    """The region the AWS config or environment names, if any."""
    import aioboto3
    from botocore.exceptions import ProfileNotFound

    try:
        name = aioboto3.Session(profile_name=profile).region_name
    except ProfileNotFound as exc:
        raise UsageError(f"--profile {profile}: no such profile in the AWS config") from exc
    return str(name) if name else None


@asynccontextmanager
async def connect(
    target: Target,
    *,
    concurrency: int = 16,
    api_rates: Mapping[str, float] | None = None,
    service: str = "iot",
) -> AsyncIterator[IotControlPlane]:
    """An `IotControlPlane` for `target` (or the same, paced and retried, around another
    service's client, e.g. `cloudwatch`); the HTTP pool is as large as the concurrency."""
    from aiobotocore.config import AioConfig
    from botocore.exceptions import NoRegionError

    config = AioConfig(
        max_pool_connections=max(10, concurrency),
        retries={"total_max_attempts": 1},  # we retry ourselves, per API
        connect_timeout=10,
        read_timeout=60,
    )
    try:
        async with _session(target).client(
            service, endpoint_url=target.endpoint_url, config=config
        ) as client:
            yield IotControlPlane(
                client,
                concurrency=concurrency,
                api_rates=default_api_rates(api_rates),
                service=service,
            )
    except NoRegionError as exc:
        raise UsageError("no AWS region: pass --region") from exc


async def caller_account(target: Target) -> str:
    """The account id of the credentials (STS GetCallerIdentity needs no permission)."""
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
    )

    try:
        async with _session(target).client("sts", endpoint_url=target.endpoint_url) as sts:
            identity = await sts.get_caller_identity()
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise CredentialsError(NO_CREDENTIALS) from exc
    except ClientError as exc:
        code = error_code(exc)
        if code in DENIED_CODES or code in {"InvalidClientTokenId", "SignatureDoesNotMatch"}:
            raise CredentialsError(f"the AWS credentials were refused ({code})") from exc
        raise AwsError("GetCallerIdentity", code, str(exc), service="sts") from exc
    except BotoCoreError as exc:
        raise AwsError("GetCallerIdentity", type(exc).__name__, str(exc), service="sts") from exc
    return str(identity["Account"])


async def check_account(target: Target, fleet: Mapping[str, str]) -> str:
    """Check the credentials belong to the fleet's account; return the account id.

    A fleet used from another account would fail later with ResourceNotFound on every
    call; refusing up front names the real problem.
    """
    account = await caller_account(target)
    expected = fleet.get("account")
    if expected and account != expected:
        raise FleetMismatch(
            f"the fleet {fleet.get('fleet_id', '?')} lives in account {expected}, but these "
            f"credentials are for account {account}: use the right --profile"
        )
    return account
