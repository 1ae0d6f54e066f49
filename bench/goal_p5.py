"""P5: locate a pinned plugin version with 2,000 versions installed, against 1 installed.

The lookup is the release path's (``Turnout._load`` for a store plugin, up to starting the
worker): ``registry.find_plugin_version(ref, "store")`` (one indexed SELECT), then
``store.has(location)`` and ``store.path(location)``. Two registries and two stores: one holds
only ``noop@1.0.0``; the other holds it among 2,000 store versions (200 plugin ids x 10
versions), with 2,000 environment folders under ``envs/``. The target row is the real one of
the installed no-op plugin in both; the other rows are written with the same columns through
SQLAlchemy Core in one transaction (the rows are what matters, not how they got there), and
their environment folders are empty.
"""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

from harness import Plan, Report, alternate, describe, timed_batch
from world import NOOP_REF, World

from turnout import Turnout
from turnout.errors import PluginNotInstalledError
from turnout.models import PluginVersion, utcnow

VERSIONS = 2000
PLUGIN_IDS = 200


def _handle(world: World, name: str, extra: int) -> Turnout:
    source = world.turnout.registry.find_plugin_version(NOOP_REF, "store")
    assert source is not None
    home = world.root / name
    handle = Turnout(str(world.new_db()), home=home)
    target = {k: v for k, v in source.model_dump().items() if k != "id"}
    rows = [target]
    per_id = extra // PLUGIN_IDS
    for i in range(extra):
        digest = hashlib.sha256(f"{name}-{i}".encode()).hexdigest()[:32]
        rows.append(
            {
                **target,
                "plugin_id": f"plugin-{i // per_id:03d}",
                "version": f"1.{i % per_id}.0",
                "distribution": f"turnout-plugin-{i // per_id:03d}",
                "entry_point": f"turnout_plugin_{i // per_id:03d}",
                "location": digest,
                "requirement": f"turnout-plugin-{i // per_id:03d}==1.{i % per_id}.0",
                "recorded_at": utcnow(),
            }
        )
    with handle.registry.engine.begin() as conn:
        conn.execute(PluginVersion.__table__.insert(), rows)  # type: ignore[attr-defined]
    for row in rows:
        (home / "envs" / row["location"]).mkdir(parents=True, exist_ok=True)
    return handle


def locate(handle: Turnout) -> Path:
    """What ``Turnout._load`` does for a store plugin before it starts the worker."""
    stored = handle.registry.find_plugin_version(NOOP_REF, "store")
    if stored is None or not handle.store.has(stored.location):
        raise PluginNotInstalledError(str(NOOP_REF), "missing", "install it")
    return handle.store.path(stored.location)


def run(world: World, plan: Plan, report: Report) -> None:
    one = _handle(world, "p5-one", 0)
    many = _handle(world, "p5-many", VERSIONS - 1)
    try:
        assert locate(one).name == locate(many).name == world.digest
        assert len(many.registry.plugin_versions("store")) == VERSIONS
        assert sum(1 for _ in (many.store.envs).iterdir()) == VERSIONS
        n = plan.batch(400)
        samples = alternate(
            {
                "p5.one": partial(timed_batch, partial(locate, one), n),
                "p5.many": partial(timed_batch, partial(locate, many), n),
            },
            plan,
        )
    finally:
        one.close()
        many.close()
    what = (
        "find_plugin_version (Core SELECT on (plugin_id, version, source), row to model) + "
        "store.has (stat) + store.path"
    )
    report.record(
        "P5",
        samples,
        describe(
            [
                ("p5.one", "locate noop@1.0.0, 1 version installed", "floor", n, what),
                (
                    "p5.many",
                    f"locate noop@1.0.0, {VERSIONS:,} versions installed",
                    "candidate",
                    n,
                    what,
                ),
            ]
        ),
    )
    report.compare("P5", "p5.many", "p5.one", 1.1)
