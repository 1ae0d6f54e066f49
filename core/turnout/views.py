"""The JSON shapes turnout prints: ``--json`` in the CLI and ``/api/`` in ``turnout serve``.

One function per shape, used by both, so that a script can move between the two without
renaming a field.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from turnout.errors import UsageError

if TYPE_CHECKING:
    from turnout.registry import Registry, TargetChange, TargetSpec
    from turnout.routing import Route
    from turnout.stats import GroupStats


def target(spec: TargetSpec) -> dict[str, Any]:
    """A target as ``turnout target show --json`` prints it."""
    return {
        "name": spec.name,
        "plugin": str(spec.plugin_ref),
        "config": spec.config,
        "max_attempts": spec.max_attempts,
        "timeout": spec.timeout,
        "isolation": spec.isolation,
        "idempotent": spec.idempotent,
        "revision": spec.revision,
        "routes": [route(r) for r in spec.routes],
    }


def route(rule: Route) -> dict[str, Any]:
    """A route with its rule in words (``describe``)."""
    return {**rule.to_dict(), "rule": rule.rule, "describe": rule.describe()}


def routes(spec: TargetSpec) -> dict[str, Any]:
    """A target's routing as ``turnout route list --json`` prints it."""
    return {
        "target": spec.name,
        "revision": spec.revision,
        "default": str(spec.plugin_ref),
        "routes": [route(r) for r in spec.routes],
    }


def change(edit: TargetChange) -> dict[str, Any]:
    """What an edit did (or, dry, would do): the target now, ``changed``, ``dry_run``, and
    for a dry run the ``moves`` (its blast radius)."""
    data = {**target(edit.target), "changed": edit.changed, "dry_run": edit.dry_run}
    if edit.moves is not None:
        data["moves"] = [move.to_dict() for move in edit.moves]
    return data


def history(registry: Registry, name: str) -> list[dict[str, Any]]:
    """Every revision of a target, oldest first, with what each changed (``turnout history``);
    empty when the target never existed."""
    from turnout.registry import changes

    rows: list[dict[str, Any]] = []
    previous = None
    for revision in registry.target_history(name):
        rows.append(
            {
                "revision": revision.revision,
                "at": revision.created_at.isoformat(),
                "actor": revision.actor,
                "reason": revision.reason,
                "before": previous,
                "target": revision.snapshot,
                "changes": changes(previous, revision.snapshot),
            }
        )
        previous = revision.snapshot
    return rows


def stats(by: Sequence[str], groups: Sequence[GroupStats], total: GroupStats) -> dict[str, Any]:
    """``turnout stats --json``: the dimensions, one entry per group, and the total."""
    return {"by": list(by), "groups": [g.to_dict() for g in groups], "total": total.to_dict()}


# For people: the CLI's tables and the web pages --------------------------------------------


LONGEST_WINDOW_DAYS = 36500
"""The longest duration a window may reach back (a hundred years: all of a registry)."""
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str, option: str = "--since") -> timedelta:
    """``90s``, ``20m``, ``1h``, ``2d`` (or a bare number of minutes) as a timedelta."""
    value, unit = (text[:-1], text[-1]) if text and text[-1] in _UNIT_SECONDS else (text, "m")
    try:
        amount = float(value)
    except ValueError:
        raise UsageError(
            f"{option} expects a duration such as 20m, 1h or 90s, got {text!r}"
        ) from None
    if not amount > 0:  # NaN too
        raise UsageError(f"{option} must be a positive duration such as 20m, 1h or 90s")
    seconds = amount * _UNIT_SECONDS[unit]
    if seconds > LONGEST_WINDOW_DAYS * _UNIT_SECONDS["d"]:
        raise UsageError(f"{option} reaches back at most {LONGEST_WINDOW_DAYS}d, got {text!r}")
    return timedelta(seconds=seconds)


def release_filters(
    *,
    since: str | None,
    target: str | None,
    plugin: str | None,
    customer: str | None,
    option: str = "--since",
) -> dict[str, Any]:
    """Release filters as people give them (CLI options, URL parameters) as the keyword
    arguments of :meth:`Ledger.recent <turnout.releases.Ledger.recent>` and ``outcomes``: a
    window back from now, a plugin id or an exact ``id@version``, a target, a customer."""
    from turnout.models import utcnow
    from turnout.refs import PluginRef

    return {
        "since": utcnow() - duration(since, option) if since else None,
        "target": target or None,
        "plugin": PluginRef.parse(plugin) if plugin and "@" in plugin else plugin or None,
        "customer": customer or None,
    }


def rate_text(value: float | None) -> str:
    """A rate as a percentage with one decimal; blank if there is none."""
    return "" if value is None else f"{value:.1%}"


def decision_text(decision: dict[str, Any]) -> str:
    """A decision record in one line: the version, and the rule that chose it."""
    why = f"{decision.get('rule')} at revision {decision.get('revision')}"
    if decision.get("route"):
        why += f", route {decision['route']}"
    if decision.get("bucket") is not None:
        why += f", bucket {decision['bucket']} by {decision.get('key')}"
    return f"{decision.get('plugin')}: {why}"


def seconds_text(value: float | None) -> str:
    """Seconds for people: ``12.3ms`` below a second, ``1.234s`` above; blank if unknown."""
    if value is None:
        return ""
    return f"{value * 1000:.1f}ms" if value < 1 else f"{value:.3f}s"
