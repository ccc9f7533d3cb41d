"""Durable Functions' per-call retry policy, :class:`RetryOptions`: what
``ctx.call_activity_with_retry`` and ``ctx.call_sub_orchestrator_with_retry`` take.

An activity's per-call policy travels with its call (``ActivityCall.retry``, not part
of the call key: the same call with another policy finds the same checkpoint) and the
dispatcher applies it instead of the activity's own. A sub-orchestration's is applied
by the engine (:mod:`durable_nb.engine.retry`).
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from durable_nb.errors import ConfigurationError

_FIELDS = (
    "first_retry_interval_in_milliseconds",
    "max_number_of_attempts",
    "backoff_coefficient",
    "max_retry_interval_in_milliseconds",
    "retry_timeout_in_milliseconds",
)


def _number(name: str, value: Any, *, least: float, strict: bool, optional: bool) -> None:
    if value is None and optional:
        return
    fine = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > least if strict else value >= least)
    )
    if not fine:
        bound = f"> {least:g}" if strict else f">= {least:g}"
        extra = " or None (no limit)" if optional else ""
        raise ConfigurationError(
            f"RetryOptions({name}={value!r}): {name} must be a number {bound}{extra}; "
            "fix the value passed to RetryOptions",
            setting=name,
            value=value,
        )


class RetryOptions:
    """A retry policy for one call: ``ctx.call_activity_with_retry(fn, RetryOptions(...),
    ...)`` and ``ctx.call_sub_orchestrator_with_retry``, with Durable Functions' names.

    ``max_number_of_attempts`` counts the first attempt too (1: no retry). The wait
    before attempt n+1 is ``first_retry_interval_in_milliseconds`` times
    ``backoff_coefficient`` to the power n-1, at most
    ``max_retry_interval_in_milliseconds``; no retry starts later than
    ``retry_timeout_in_milliseconds`` after the call was made. None: no limit.
    """

    __slots__ = _FIELDS

    first_retry_interval_in_milliseconds: float
    max_number_of_attempts: int
    backoff_coefficient: float
    max_retry_interval_in_milliseconds: float | None
    retry_timeout_in_milliseconds: float | None

    def __init__(
        self,
        first_retry_interval_in_milliseconds: float,
        max_number_of_attempts: int,
        *,
        backoff_coefficient: float = 1.0,
        max_retry_interval_in_milliseconds: float | None = None,
        retry_timeout_in_milliseconds: float | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            names = []
            for name in sorted(unknown):
                close = difflib.get_close_matches(name, _FIELDS, n=1)
                names.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ConfigurationError(
                f"RetryOptions got unknown keyword {', '.join(names)}; it takes "
                f"{', '.join(_FIELDS)}",
                setting=sorted(unknown)[0],
                value=unknown[sorted(unknown)[0]],
            )
        attempts = max_number_of_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigurationError(
                f"RetryOptions(max_number_of_attempts={attempts!r}): the number of attempts "
                "counts the first one and must be a whole number >= 1 (1: no retry)",
                setting="max_number_of_attempts",
                value=attempts,
            )
        first = first_retry_interval_in_milliseconds
        _number(_FIELDS[0], first, least=0, strict=True, optional=False)
        _number(_FIELDS[2], backoff_coefficient, least=1, strict=False, optional=False)
        _number(_FIELDS[3], max_retry_interval_in_milliseconds, least=0, strict=True, optional=True)
        _number(_FIELDS[4], retry_timeout_in_milliseconds, least=0, strict=True, optional=True)
        self.first_retry_interval_in_milliseconds = first
        self.max_number_of_attempts = attempts
        self.backoff_coefficient = backoff_coefficient
        self.max_retry_interval_in_milliseconds = max_retry_interval_in_milliseconds
        self.retry_timeout_in_milliseconds = retry_timeout_in_milliseconds

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in _FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RetryOptions) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{n}={v!r}" for n, v in zip(_FIELDS, self._values(), strict=True) if v is not None
        )
        return f"RetryOptions({shown})"

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry)."""
        delay = self.first_retry_interval_in_milliseconds / 1000.0
        for _ in range(max(attempt - 2, 0)):
            delay *= self.backoff_coefficient
            if self.max_retry_interval_in_milliseconds is not None and (
                delay * 1000.0 >= self.max_retry_interval_in_milliseconds
            ):
                break
        if self.max_retry_interval_in_milliseconds is not None:
            delay = min(delay, self.max_retry_interval_in_milliseconds / 1000.0)
        return delay

    def allows(self, attempt: int, first_started: float, now: float) -> bool:
        """Whether a failed ``attempt`` gets another, the failure seen at ``now``."""
        if attempt >= self.max_number_of_attempts:
            return False
        if self.retry_timeout_in_milliseconds is not None:
            next_start = now + self.delay_before(attempt + 1)
            return (next_start - first_started) * 1000.0 <= self.retry_timeout_in_milliseconds
        return True


def check_retry_options(value: Any, where: str) -> RetryOptions:
    """``value`` if it is a RetryOptions, else an error saying what ``where`` takes."""
    if not isinstance(value, RetryOptions):
        raise ConfigurationError(
            f"{where} takes a RetryOptions as its second argument, got {value!r}; write "
            f"{where}(fn, RetryOptions(first_retry_interval_in_milliseconds=1000, "
            "max_number_of_attempts=3), *args)",
            setting="retry_options",
            value=value,
        )
    return value
