"""registry.db.example stays at the latest migration and usable; the demo still runs."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from turnout import _db
from turnout.registry import Registry

ROOT = Path(__file__).parent.parent
EXAMPLE = ROOT / "registry.db.example"


def _turnout() -> str:
    return shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"


def test_example_registry_is_at_the_latest_migration(tmp_path: Path) -> None:
    copy = tmp_path / "example.db"
    shutil.copy(EXAMPLE, copy)
    registry = Registry(str(copy))
    with registry.engine.connect() as conn:
        assert _db.current_revision(conn) == _db.SCHEMA_HEAD
    targets = registry.list_targets()
    registry.close()
    assert len(targets) >= 2
    assert all(str(t.plugin_ref) == "directory@1.0.0" for t in targets)
    assert all(t.config["root"].startswith("/") for t in targets)


def test_example_registry_target_list_works_in_place() -> None:
    before = hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    done = subprocess.run(
        [_turnout(), "--db", "registry.db.example", "target", "list", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert '"docs-site"' in done.stdout
    assert hashlib.sha256(EXAMPLE.read_bytes()).hexdigest() == before
    assert not Path(f"{EXAMPLE}-wal").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("plugin_site")
def test_example_demo_runs(tmp_path: Path) -> None:
    env = {**os.environ, "TURNOUT_DEMO_DIR": str(tmp_path / "demo")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "demo" / "demo.py")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Two releases ran; the repeated key ran nothing" in done.stdout
    assert 'served page says: Build: <span id="build">2</span>' in done.stdout
