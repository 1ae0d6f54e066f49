"""Rebuild ``registry.db.example`` at the latest migration with a few example targets.

Run with the core and the directory releaser installed (``nox -s example_registry``): every
target goes through the same checks as ``turnout target set``. Rows that only describe this
machine (where a plugin was found) are left out of the example.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from turnout.runtime import Turnout

EXAMPLE = Path(__file__).resolve().parent.parent / "registry.db.example"

TARGETS = [
    ("docs-site", {"root": "/srv/www/docs", "keep": 5}, None, None),
    ("marketing-site", {"root": "/srv/www/marketing", "keep": 3}, 120.0, 5),
    ("status-page", {"root": "/srv/www/status", "keep": 10}, 30.0, 2),
]


def main() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{EXAMPLE}{suffix}").unlink(missing_ok=True)
    with Turnout(str(EXAMPLE)) as handle:
        handle.registry.upgrade()
        for name, config, timeout, attempts in TARGETS:
            handle.set_target(
                name,
                "directory@1.0.0",
                config=config,
                timeout=timeout,
                max_attempts=attempts,
                actor="example",
                reason="example target",
            )
        with handle.registry.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM plugin_versions"))
    # The handle is closed: its last connection folded the WAL back into the file.
    with contextlib.closing(sqlite3.connect(EXAMPLE, isolation_level=None)) as conn:
        conn.execute("VACUUM")
    print(f"wrote {EXAMPLE}")


if __name__ == "__main__":
    main()
