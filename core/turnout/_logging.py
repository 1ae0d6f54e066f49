"""The CLI's log handler: text or JSON lines on stderr. The library itself configures nothing.

Records about one release carry ``release_id``, ``target`` and ``plugin`` (the ref) as extra
fields; both formats print them. Every message is escaped to one line, so what a plugin prints
or raises cannot forge a log line or reach the terminal as an escape sequence.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from turnout._secrets import escape

FIELDS = ("release_id", "target", "plugin")
FORMATS = ("text", "json")


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message [release=… target=… plugin=…]``.

    A record whose ``escaped`` extra is true was escaped by its emitter (plugin output is, for
    any handler): it is not escaped twice.
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if not getattr(record, "escaped", False):
            message = escape(message)
        line = f"{record.levelname} {record.name}: {message}"
        fields = [f"{name}={getattr(record, name)}" for name in FIELDS if hasattr(record, name)]
        if fields:
            line += f" [{' '.join(fields)}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the release's fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(
            record.levelname.lower(),
            record.name,
            record.getMessage(),
            created=record.created,
            **fields,
        )


def json_line(
    level: str, logger: str, message: str, *, created: float | None = None, **fields: Any
) -> str:
    """One log line as JSON: time, level, logger, message and any further fields."""
    moment = datetime.now(UTC) if created is None else datetime.fromtimestamp(created, UTC)
    data = {"time": moment.isoformat(), "level": level, "logger": logger, "message": message}
    return json.dumps({**data, **fields}, ensure_ascii=True, default=str)


class _Stderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time of each record."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


def configure(level: str, fmt: str) -> None:
    """Send the ``turnout`` loggers' records at ``level`` and above to stderr in ``fmt``.

    Records still propagate: a host that configured the root logger gets them too.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("turnout")
    for old in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
