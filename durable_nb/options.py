"""How an activity is run: its retry policy, timeout, concurrency, executor and sharing
(:class:`ActivityOptions`, what ``%%activity`` flags and ``@activity`` keywords give)."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import re
from dataclasses import dataclass

from durable_nb.engine.retry_options import RetryOptions
from durable_nb.errors import ActivityArgumentsError, DefinitionError, ResultNotStorableError

_TTL_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_TTL_TEXT = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*", re.IGNORECASE)


def ttl_seconds(value: object) -> float | None:
    """A shared result's time to live in seconds, from a number of seconds, a
    ``datetime.timedelta`` or text such as ``"90s"``, ``"15m"``, ``"12h"``, ``"1d"``, ``"2w"``."""
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        match = _TTL_TEXT.fullmatch(value)
        if match is None:
            raise DefinitionError(
                f"ttl {value!r} is not a duration; write seconds or a number with a unit: "
                "90s, 15m, 12h, 1d, 2w"
            )
        seconds = float(match[1]) * _TTL_UNITS[match[2].lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise DefinitionError(
            f"ttl must be seconds, a timedelta or text such as '12h' or '1d', got {value!r}"
        )
    if not seconds > 0:  # negative, zero or NaN
        raise DefinitionError(f"ttl must be > 0 seconds, got {value!r}")
    return seconds


@dataclass(frozen=True)
class ActivityOptions:
    """How an activity is run: retries with exponential backoff, timeout, concurrency."""

    retries: int = 0
    backoff: float = 1.0
    backoff_coefficient: float = 2.0
    max_backoff: float = 300.0
    retry_timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    no_retry_on: tuple[type[BaseException], ...] = ()
    timeout: float | None = None
    concurrency: int | None = None
    version: str | None = None
    executor: str | None = None  # a name given to configure(executors=...); None: the default
    # Answer a call from any instance's success with the same name, code and arguments.
    share: bool = False
    # Shared results older than this many seconds run again; a timedelta or text such as
    # "90s", "15m", "12h", "1d", "2w" is accepted and normalised to seconds.
    ttl: float | None = None

    def __post_init__(self) -> None:
        # A single exception class is accepted where a tuple of them is expected.
        for field_name in ("retry_on", "no_retry_on"):
            value = getattr(self, field_name)
            if isinstance(value, type):
                object.__setattr__(self, field_name, (value,))
            elif isinstance(value, (list, set, frozenset)):
                object.__setattr__(self, field_name, tuple(value))
        problems = []
        numbers = ("backoff", "backoff_coefficient", "max_backoff", "retry_timeout", "timeout")
        for field_name in numbers:
            value = getattr(self, field_name)
            if value is None and field_name in ("retry_timeout", "timeout"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                problems.append(f"{field_name} must be a number of seconds, got {value!r}")
        if problems:
            raise DefinitionError("; ".join(problems))
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            problems.append(f"retries must be a whole number >= 0, got {self.retries!r}")
        if self.backoff < 0:
            problems.append(f"backoff must be >= 0 seconds, got {self.backoff!r}")
        if self.backoff_coefficient < 1:
            problems.append(f"backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}")
        if self.max_backoff < 0:
            problems.append(f"max_backoff must be >= 0 seconds, got {self.max_backoff!r}")
        if self.retry_timeout is not None and self.retry_timeout <= 0:
            problems.append(f"retry_timeout must be > 0 seconds, got {self.retry_timeout!r}")
        for field_name in ("retry_on", "no_retry_on"):
            kinds = getattr(self, field_name)
            if not isinstance(kinds, tuple):
                problems.append(f"{field_name} takes exception classes, got {kinds!r}")
                continue
            for kind in kinds:
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    problems.append(f"{field_name} takes exception classes, got {kind!r}")
        if self.timeout is not None and self.timeout <= 0:
            problems.append(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.concurrency is not None and (
            isinstance(self.concurrency, bool)
            or not isinstance(self.concurrency, int)
            or self.concurrency < 1
        ):
            problems.append(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        if not isinstance(self.share, bool):
            problems.append(f"share must be True or False, got {self.share!r}")
        try:
            object.__setattr__(self, "ttl", ttl_seconds(self.ttl))
        except DefinitionError as why:
            problems.append(str(why))
        else:
            if self.ttl is not None and not self.share:
                problems.append(
                    "ttl applies to shared results only: add share=True (%%activity --share), "
                    "or drop ttl"
                )
        if problems:
            raise DefinitionError("; ".join(problems))

    @property
    def max_attempts(self) -> int:
        return self.retries + 1

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry)."""
        delay = self.backoff * self.backoff_coefficient ** max(attempt - 2, 0)
        return float(min(delay, self.max_backoff))

    def should_retry(
        self, error: BaseException, attempt: int, first_started: float, now: float
    ) -> bool:
        """Whether a failed ``attempt`` gets another, under this policy."""
        if attempt >= self.max_attempts or not isinstance(error, Exception):
            return False
        if isinstance(error, (ResultNotStorableError, ActivityArgumentsError)):
            return False  # the same call would fail the same way
        if self.no_retry_on and isinstance(error, self.no_retry_on):
            return False
        if not isinstance(error, self.retry_on):
            return False
        if self.retry_timeout is not None:
            next_start = now + self.delay_before(attempt + 1)
            if next_start - first_started > self.retry_timeout:
                return False
        return True


def with_retry(options: ActivityOptions, retry: RetryOptions | None) -> ActivityOptions:
    """``options`` with the retry policy of one call (ctx.call_activity_with_retry) in
    place of its own: attempts, waits and retry timeout; which exceptions are retried
    (``retry_on``, ``no_retry_on``), the timeout of an attempt and the rest stay."""
    if retry is None:
        return options
    most = retry.max_retry_interval_in_milliseconds
    timeout = retry.retry_timeout_in_milliseconds
    return dataclasses.replace(
        options,
        retries=retry.max_number_of_attempts - 1,
        backoff=retry.first_retry_interval_in_milliseconds / 1000.0,
        backoff_coefficient=retry.backoff_coefficient,
        max_backoff=float("inf") if most is None else most / 1000.0,
        retry_timeout=None if timeout is None else timeout / 1000.0,
    )
