"""Secret references in target config: ``env:NAME`` and ``file:/path``.

A reference is stored as written and resolved only just before a plugin is called; the resolved
value lives in memory for that call and is redacted from anything turnout records.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from turnout.errors import SecretNotFoundError

REDACTED = "***"
DROPPED = "[earlier output dropped]\n"
"""Starts the tail of an output whose beginning was cut off (see :func:`keep_tail`)."""
_PREFIXES = ("env:", "file:")


def is_reference(value: object) -> bool:
    """Whether a config value is a secret reference."""
    return isinstance(value, str) and value.startswith(_PREFIXES)


def resolve(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Resolve every reference in ``config``, at any depth (in objects and in lists).

    Returns:
        The resolved config and the list of secret values it now holds (for redaction).

    Raises:
        SecretNotFoundError: A referenced variable is unset or a file cannot be read; the
            error names the field by its path (``headers.Authorization``, ``tokens[1]``).
    """
    secrets: list[str] = []
    resolved = {field: _resolved(value, field, secrets) for field, value in config.items()}
    return resolved, secrets


def _resolved(value: Any, path: str, secrets: list[str]) -> Any:
    if is_reference(value):
        secret = _read(path, value)
        secrets.append(secret)
        return secret
    if isinstance(value, Mapping):
        return {key: _resolved(item, f"{path}.{key}", secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolved(item, f"{path}[{n}]", secrets) for n, item in enumerate(value)]
    return value


def _read(field: str, reference: str) -> str:
    kind, _, name = reference.partition(":")
    if not name:
        raise SecretNotFoundError(field, reference, "names nothing")
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretNotFoundError(field, reference, f"is unset; export {name} for turnout")
        return value
    try:
        return Path(name).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretNotFoundError(field, reference, f"cannot be read ({exc.strerror})") from None


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in ``text``, and the end of a secret that
    a cut (see :func:`keep_tail`) left at the start of a kept tail."""
    ordered = [secret for secret in sorted(secrets, key=len, reverse=True) if secret]
    for secret in ordered:
        text = text.replace(secret, REDACTED)
    if ordered and DROPPED in text:
        head, *tails = text.split(DROPPED)
        text = DROPPED.join([head, *(_redact_cut(tail, ordered) for tail in tails)])
    return text


def _redact_cut(tail: str, secrets: list[str]) -> str:
    """``tail`` without the end of a secret that the cut before it split (the longest match)."""
    for secret in secrets:
        for size in range(len(secret) - 1, 0, -1):
            if tail.startswith(secret[-size:]):
                return REDACTED + tail[size:]
    return tail


def keep_tail(text: str, limit: int) -> str:
    """The last ``limit`` characters of ``text``, after :data:`DROPPED` when anything before
    them was cut off (now or by an earlier call): a secret the cut split is then redacted by
    :func:`redact` all the same."""
    cut = text.startswith(DROPPED)
    body = text[len(DROPPED) :] if cut else text
    if len(body) > limit:
        body, cut = body[-limit:], True
    return DROPPED + body if cut else body


def redact_values(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` (JSON-like: dicts, lists, strings) with :func:`redact` applied to every string."""
    secrets = list(secrets)
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, Mapping):
        return {redact(k, secrets): redact_values(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v, secrets) for v in value]
    return value


_UNSAFE = (
    *range(0x20),
    *range(0x7F, 0xA0),
    0x2028,
    0x2029,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
)  # C0 and C1 controls, DEL, line separators, bidi controls
_ESCAPES = {c: chr(c).encode("unicode_escape").decode() for c in _UNSAFE} | {ord("\\"): "\\\\"}


def escape(text: str) -> str:
    """``text`` as one line with no control characters: line breaks, ANSI escapes and bidi
    controls become backslash escapes (``\\n``, ``\\x1b``, ``\\u202e``); a backslash doubles."""
    return text.translate(_ESCAPES)
