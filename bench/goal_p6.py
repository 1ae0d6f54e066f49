"""P6: ``turnout plugin install`` of a wheel, against ``uv pip install --target`` of the same.

The same wheel (the no-op plugin, depending on pluggy) from the same local wheelhouse, offline
(``--no-index --find-links``), with the same uv, the same link mode (copy) and the same warm
uv cache; a fresh target folder (uv) or a fresh store and registry (turnout) every time, made
and removed outside the clock. Turnout's figure is ``Turnout.install_plugin`` (what the CLI
command calls); the CLI itself, with its interpreter start and imports, is shown beside it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Plan, Report, alternate, describe
from world import NOOP_REF, World

from turnout import Turnout
from turnout.store import digest_of, read_plugins, tree_hashes


def run(world: World, plan: Plan, report: Report, *, cli: bool) -> None:
    """``cli``: also the CLI beside its own uv floor, and the parts of the API figure."""
    scratch = world.root / "p6"
    scratch.mkdir()

    def uv_target() -> float:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        command = [
            world.uv, "pip", "install", "--quiet", "--target", str(folder),
            "--python", sys.executable, "--link-mode", "copy", "--no-config",
            "--no-index", "--find-links", str(world.wheelhouse), str(world.wheel),
        ]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        elapsed = time.perf_counter() - start
        shutil.rmtree(folder)
        return elapsed

    def api_install() -> float:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        handle = Turnout(str(world.new_db()), home=folder)
        start = time.perf_counter()
        (outcome,) = handle.install_plugin(world.request)
        elapsed = time.perf_counter() - start
        assert outcome.status == "installed"
        handle.close()
        shutil.rmtree(folder)
        return elapsed

    def cli_install() -> float:
        folder = Path(tempfile.mkdtemp(dir=scratch))
        db = world.new_db()
        command = [
            str(Path(sys.executable).parent / "turnout"), "--db", str(db),
            "plugin", "install", str(world.wheel),
            "--find-links", str(world.wheelhouse), "--no-index",
        ]  # fmt: skip
        env = {**os.environ, "TURNOUT_HOME": str(folder)}
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        elapsed = time.perf_counter() - start
        shutil.rmtree(folder)
        return elapsed

    # uv's timings spread widely on a busy machine: twice the rounds for the goal's pair.
    samples = alternate(
        {"p6.uv": uv_target, "p6.api": api_install},
        dataclasses.replace(plan, rounds=2 * plan.rounds),
    )
    if cli:  # about a second a sample: fewer rounds, against its own uv floor
        samples |= alternate(
            {"p6.uv_cli": uv_target, "p6.cli": cli_install},
            dataclasses.replace(plan, rounds=min(plan.rounds, 7), warmup=1),
        )
    entries = [
        (
            "p6.uv",
            "uv pip install --target (fresh folder)",
            "floor",
            1,
            "uv resolves from the wheelhouse, installs the wheel and pluggy (copy)",
        ),
        (
            "p6.api",
            "Turnout.install_plugin (fresh store + registry)",
            "candidate",
            1,
            "the same uv command into store/tmp (the schema check and the read of the "
            "store's rows while it runs), entry points read with importlib.metadata, sha256 "
            "of every file, rename into envs/<digest>, one registry row (Core insert)",
        ),
        (
            "p6.uv_cli",
            "uv pip install --target (beside the CLI)",
            "floor",
            1,
            "the same uv command, alternated with the CLI runs",
        ),
        (
            "p6.cli",
            "`turnout plugin install` CLI (fresh store + registry)",
            "info",
            1,
            "the API figure plus interpreter start, imports (click, sqlmodel, ...), engine",
        ),
    ]
    if cli:
        samples |= _parts(world, plan)
        entries += PARTS
    report.record("P6", samples, describe([e for e in entries if e[0] in samples]))
    report.compare("P6", "p6.api", "p6.uv", 1.2)
    if cli:
        report.compare("P6", "p6.cli", "p6.uv_cli", 1.2, advisory=True)


PARTS = [
    (
        "p6.part.schema",
        "part: first query of a new handle (schema check)",
        "info",
        1,
        "Registry.ensure_schema on a new Turnout: connect, pragmas, inspect alembic_version",
    ),
    (
        "p6.part.scan",
        "part: read entry points + hash the environment",
        "info",
        1,
        "store.read_plugins + tree_hashes + digest_of on the built environment",
    ),
    (
        "p6.part.record",
        "part: record the version in the registry",
        "info",
        1,
        "add_store_versions from the rows read while uv ran (one Core insert, one commit)",
    ),
]


def _parts(world: World, plan: Plan) -> dict[str, list[float]]:
    """The parts of Turnout.install_plugin besides the uv run, each on a fresh registry."""
    row = world.turnout.registry.find_plugin_version(NOOP_REF, "store")
    assert row is not None

    def fresh() -> Turnout:
        return Turnout(str(world.new_db()), home=world.root / "p6-parts")

    def schema() -> float:
        handle = fresh()
        start = time.perf_counter()
        handle.registry.ensure_schema()
        elapsed = time.perf_counter() - start
        handle.close()
        return elapsed

    def scan() -> float:
        start = time.perf_counter()
        read_plugins(world.env)
        digest_of(tree_hashes(world.env))
        return time.perf_counter() - start

    def record() -> float:
        handle = fresh()
        known = handle.registry.plugin_versions("store")  # as while uv runs
        start = time.perf_counter()
        added = handle.registry.add_store_versions(
            {NOOP_REF: (row.distribution, row.entry_point)},
            location=row.location,
            hashes=row.hashes,
            requirement=row.requirement or "",
            known=known,
        )
        elapsed = time.perf_counter() - start
        assert added == {NOOP_REF: None}
        handle.close()
        return elapsed

    return alternate(
        {"p6.part.schema": schema, "p6.part.scan": scan, "p6.part.record": record}, plan
    )
