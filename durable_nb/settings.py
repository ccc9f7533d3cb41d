"""Checks of the values ``configure()`` takes: each bad one is a
:class:`~durable_nb.errors.ConfigurationError` naming the setting and the value."""

from __future__ import annotations

from durable_nb.errors import ConfigurationError

PROGRESS_MODES = ("auto", "widget", "text", "none")


def check_settings(
    *,
    progress: str | None = None,
    max_workers: int | None = None,
    max_in_flight: int | None = None,
    busy_timeout: float | None = None,
    runaway_calls: int | None = None,
) -> None:
    """Raise ConfigurationError for the first value given that cannot be used."""
    if runaway_calls is not None:
        if isinstance(runaway_calls, bool) or not isinstance(runaway_calls, int):
            raise _bad(
                "runaway_calls",
                runaway_calls,
                "runaway_calls must be a whole number of calls (0 turns the check off), "
                f"got {runaway_calls!r}",
            )
        if runaway_calls < 0:
            raise _bad(
                "runaway_calls",
                runaway_calls,
                f"runaway_calls must be >= 0 (0 turns the check off), got {runaway_calls}",
            )
    if busy_timeout is not None and busy_timeout < 0:
        raise _bad(
            "busy_timeout", busy_timeout, f"busy_timeout must be >= 0 seconds, got {busy_timeout}"
        )
    if progress is not None and progress not in PROGRESS_MODES:
        raise _bad(
            "progress", progress, f"progress must be one of {PROGRESS_MODES}, got {progress!r}"
        )
    if max_workers is not None and max_workers < 1:
        raise _bad("max_workers", max_workers, f"max_workers must be >= 1, got {max_workers}")
    if max_in_flight is not None and max_in_flight < 1:
        raise _bad(
            "max_in_flight", max_in_flight, f"max_in_flight must be >= 1, got {max_in_flight}"
        )


def check_instance_id(instance_id: object) -> str:
    """An explicit ``instance_id``: a non-empty string."""
    if not isinstance(instance_id, str) or not instance_id:
        raise _bad(
            "instance_id",
            instance_id,
            f"instance_id must be a non-empty string, got {instance_id!r}",
        )
    return instance_id


def _bad(setting: str, value: object, message: str) -> ConfigurationError:
    return ConfigurationError(message, setting=setting, value=value)
