"""The JSON shapes turnout prints: ``--json`` in the CLI and ``/api/`` in ``turnout serve``.

One function per shape, used by both, so that a script can move between the two without
renaming a field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
