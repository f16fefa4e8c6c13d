"""The exception hierarchy. Every error a user can cause or meet maps to one exit code.

ElfError
├── UsageError          exit 2: bad command line, bad input file, bad local state
│   ├── LedgerError     the ledger is corrupt, newer than this version, or unwritable
│   ├── StateDirBusy    another command holds the state dir's lock (elf_async.statelock)
│   └── FleetMismatch   pointed at another region or account than the fleet lives in
└── RuntimeFailure      exit 1: the run could not do its job
    ├── AwsError        an AWS call failed for good (carries the AWS error code)
    │   └── AccessDenied    names the IAM action that is missing
    ├── CredentialsError    no AWS credentials found
    ├── PartialFailure      some things failed; the summary says which
    └── LocalStackError     the embedded local stack cannot start or is not running
ThresholdFailed         exit 3: the run worked but a --threshold did not hold, or `report
                        compare` found a metric that regressed beyond --max-regression
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_THRESHOLD = 3
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it
EXIT_TERMINATED = 143  # SIGTERM


class ElfError(Exception):
    """Base of every error elf-async reports as one line on stderr."""

    exit_code = EXIT_RUNTIME


class UsageError(ElfError):
    """The command line, an input file or the local state is wrong: exit 2."""

    exit_code = EXIT_USAGE


class LedgerError(UsageError):
    """The ledger cannot be used as it is."""


class StateDirBusy(UsageError):
    """Another command is changing (or reading) the state dir: one at a time."""


class FleetMismatch(UsageError):
    """The command targets another region or account than the fleet's."""


class RuntimeFailure(ElfError):
    """The run could not complete its job: exit 1."""


class CredentialsError(RuntimeFailure):
    """No AWS credentials could be found."""


class LocalStackError(RuntimeFailure):
    """The embedded local stack is missing, not running, or cannot start."""


class AwsError(RuntimeFailure):
    """An AWS call failed for good."""

    def __init__(
        self,
        operation: str,
        code: str,
        message: str,
        *,
        service: str = "iot",
        details: dict[str, object] | None = None,
    ) -> None:
        self.operation = operation
        self.code = code
        self.message = message
        self.service = service
        self.details = details or {}  # modeled error fields, e.g. resourceId
        super().__init__(f"{operation} failed: {code}: {message}")

    @property
    def action(self) -> str:
        """The IAM action of the failed call, e.g. ``iot:CreateThing``."""
        return f"{self.service}:{self.operation}"


class AccessDenied(AwsError):
    """The caller lacks the IAM permission for an operation."""

    def __init__(self, operation: str, code: str, message: str, *, service: str = "iot") -> None:
        super().__init__(operation, code, message, service=service)
        self.args = (
            f"access denied: these credentials lack the IAM action {self.action} ({code})",
        )


class PartialFailure(RuntimeFailure):
    """Some items failed; the command already printed the summary."""


class ThresholdFailed(ElfError):
    """A --threshold did not hold, or a metric regressed (`report compare`): exit 3."""

    exit_code = EXIT_THRESHOLD


@dataclass
class ErrorTally:
    """Things that failed for good, by AWS error code, each code with its first occurrence."""

    counts: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # code -> "thing: message"

    def record(self, name: str, exc: AwsError) -> None:
        self.counts[exc.code] += 1
        self.first.setdefault(exc.code, f"{name}: {exc}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def lines(self) -> list[str]:
        return [f"{n}x {code}, first: {self.first[code]}" for code, n in self.counts.most_common()]

    def as_json(self) -> dict[str, dict[str, object]]:
        return {code: {"count": n, "first": self.first[code]} for code, n in self.counts.items()}
