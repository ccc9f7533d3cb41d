"""When a schedule's notebook is due: pure logic on timestamps, no store, no clock read.

A schedule repeats either every N seconds (``--every 1h30m``), counted from the time the
schedule was created, or at the times of a cron expression, evaluated in UTC (a cron
schedule does not follow the local time zone nor its daylight saving changes). Its
*ticks* are those times; the first tick is the first one after creation.

A scheduler that was not running while several ticks passed runs only the latest of
them (:func:`due_tick`), once: the ticks missed are not made up one by one. Times are
seconds since the epoch (``time.time()``), which is UTC.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from durable_nb.errors import ConfigurationError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EVERY = re.compile(r"(\d+)([smhd])")
# cron has a resolution of a minute; a tick exactly at "now" counts as due.
_EPSILON = timedelta(microseconds=1)


def parse_every(text: str) -> int:
    """Seconds of an ``--every`` value: ``30s``, ``15m``, ``1h``, ``1d``, ``1h30m``
    (numbers with units, added up); zero, negative or anything else is refused."""
    spec = text.strip().lower()
    parts = _EVERY.findall(spec)
    if not spec or "".join(f"{n}{u}" for n, u in parts) != spec:
        raise ConfigurationError(
            f"--every takes a duration such as 30s, 15m, 1h, 1d or 1h30m, got {text!r}",
            setting="every",
            value=text,
        )
    seconds = sum(int(number) * _UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ConfigurationError(
            f"--every must be longer than zero, got {text!r}; give e.g. 30s or 1h",
            setting="every",
            value=text,
        )
    return seconds


def format_every(seconds: int) -> str:
    """``5400`` as ``1h30m``: the way ``--every`` is written."""
    text = ""
    for unit, size in sorted(_UNITS.items(), key=lambda item: -item[1]):
        count, seconds = divmod(seconds, size)
        if count:
            text += f"{count}{unit}"
    return text or "0s"


def check_cron(expression: str) -> str:
    """``expression`` if cronsim accepts it (five fields, evaluated in UTC)."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(expression, datetime.now(timezone.utc))
    except CronSimError as exc:
        raise ConfigurationError(
            f"--cron {expression!r} is not a cron expression ({exc}); it takes five "
            'fields, minute hour day month weekday, e.g. "0 * * * *" for every hour (UTC)',
            setting="cron",
            value=expression,
        ) from None
    return expression


@dataclass(frozen=True)
class Timing:
    """How a schedule repeats: ``every`` seconds from ``created``, or at ``cron`` (UTC)."""

    created: float
    every: int | None = None
    cron: str | None = None

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ConfigurationError(
                "a schedule repeats either --every DURATION or at --cron EXPRESSION: "
                "give exactly one of them",
                setting="every/cron",
            )

    def next_tick(self, after: float) -> float:
        """The first tick strictly after ``after`` (and after the creation)."""
        after = max(after, self.created)
        if self.every is not None:
            count = math.floor((after - self.created) / self.every) + 1
            return self.created + count * self.every
        from cronsim import CronSim

        assert self.cron is not None
        found: datetime = next(CronSim(self.cron, _utc(after)))
        return found.timestamp()

    def last_tick(self, now: float) -> float | None:
        """The latest tick at or before ``now``; None before the first."""
        if now <= self.created:
            return None
        if self.every is not None:
            count = math.floor((now - self.created) / self.every)
            return self.created + count * self.every if count >= 1 else None
        from cronsim import CronSim

        assert self.cron is not None
        found: datetime = next(CronSim(self.cron, _utc(now) + _EPSILON, reverse=True))
        tick = found.timestamp()
        return tick if tick > self.created else None


def due_tick(timing: Timing, done: float | None, now: float) -> float | None:
    """The tick to run now, or None: the latest tick at or before ``now`` that is later
    than ``done`` (the last tick handled, run or skipped). Any number of missed ticks
    gives one due tick, the latest."""
    tick = timing.last_tick(now)
    if tick is None or (done is not None and tick <= done):
        return None
    return tick


def _utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def iso(timestamp: float | None) -> str:
    """A timestamp as people read it in a table: UTC, to the second."""
    if timestamp is None:
        return "-"
    return _utc(timestamp).strftime("%Y-%m-%d %H:%M:%S UTC")
