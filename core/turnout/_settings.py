"""Numbers read from ``TURNOUT_*`` environment variables, refused with the fix when malformed."""

from __future__ import annotations

import os

from turnout.errors import ConfigurationError


def number(
    name: str, default: float, *, integer: bool = False, unit: str = "seconds", zero: bool = False
) -> float:
    """A number above 0 (or, with ``zero``, 0 or more) of ``unit`` from the environment variable
    ``name``; ``default`` when it is unset.

    Raises:
        ConfigurationError: It is set to something else (the message names it and the fix).
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if not (value >= 0 if zero else value > 0):
        kind = f"a whole number of {unit}" if integer else f"a number of {unit}"
        least = "0 or more" if zero else "above 0"
        raise ConfigurationError(f"{name} must be {kind} {least}, not {raw!r}; fix or unset it")
    return value


OTEL_ASKING = ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT")
"""The variables that ask :func:`turnout.telemetry.configure` to set up the SDK: without one of
them the CLI does not even import OpenTelemetry."""
