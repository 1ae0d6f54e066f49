"""The world the benchmarks run in, built offline in a temporary folder.

- a wheelhouse: a no-op releaser wheel (``turnout-noop`` 1.0.0, plugin id ``noop``, depending on
  pluggy) and a pluggy wheel rebuilt from the installed copy (``tests/helpers.py``);
- a site folder with the no-op plugin installed, put on ``sys.path``: turnout's environment;
- a plugin store (``TURNOUT_HOME``) with the same wheel installed by ``Turnout.install_plugin``;
- a registry template at the latest migration, copied for every registry a benchmark needs;
- one registry with two targets on ``noop@1.0.0``: ``noop-inline`` (isolation inline) and
  ``noop-process`` (isolation process, the store's environment in a warm worker).

The uv and stevedore caches (``XDG_CACHE_HOME``) live in the temporary folder too.
"""

from __future__ import annotations

import importlib
import itertools
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # helpers: real wheels without a build backend

from helpers import build_wheel, install_into, wheel_from_installed  # noqa: E402

from turnout import Turnout  # noqa: E402
from turnout.refs import PluginRef  # noqa: E402
from turnout.store import InstallRequest, find_uv  # noqa: E402

NOOP_DIST = "turnout-noop"
NOOP_VERSION = "1.0.0"
NOOP_ID = "noop"
NOOP_MODULE = "turnout_noop"
NOOP_REF = PluginRef(NOOP_ID, NOOP_VERSION)
NOOP_SOURCE = '''"""A releaser that does nothing: the benchmarks' plugin."""

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact, target, config, context, idempotency_key, attempt):
    return {"ok": True}
'''
ARTIFACT = "dist/site.tar.gz"
RELEASE_ARGS = {
    "artifact": ARTIFACT,
    "target": "noop-process",
    "config": {},
    "context": {},
    "idempotency_key": "bench-0",
    "attempt": 1,
}


class World:
    """Wheels, a plugin site, a store and registries under one temporary folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.wheelhouse = root / "wheelhouse"
        self.site = root / "site"
        self.home = root / "home"
        self.template = root / "template.db"
        self._keys = itertools.count()
        self._dbs = itertools.count()
        os.environ["TURNOUT_HOME"] = str(self.home)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        os.environ["UV_CACHE_DIR"] = str(root / "cache" / "uv")
        uv = find_uv()
        if uv is None:
            raise SystemExit("bench: uv is needed (it ships with turnout as a dependency)")
        self.uv = uv

        self.wheel = build_wheel(
            self.wheelhouse,
            NOOP_DIST,
            NOOP_VERSION,
            {f"{NOOP_MODULE}.py": NOOP_SOURCE},
            entry_points={"turnout.releasers": {NOOP_ID: NOOP_MODULE}},
            requires=["pluggy>=1.5"],
        )
        wheel_from_installed(self.wheelhouse, "pluggy")

        install_into(self.site, self.wheel)
        sys.path.insert(0, str(self.site))
        importlib.invalidate_caches()

        registry = Turnout(str(self.template), home=self.home).registry
        registry.upgrade()
        registry.close()

        self.turnout = Turnout(str(self.new_db()), home=self.home)
        self.request = InstallRequest(
            spec=str(self.wheel), find_links=[str(self.wheelhouse)], no_index=True
        )
        (outcome,) = self.turnout.install_plugin(self.request)
        self.digest = outcome.digest
        self.env = self.turnout.store.path(self.digest)
        for isolation in ("inline", "process"):
            self.turnout.set_target(
                f"noop-{isolation}",
                NOOP_REF,
                isolation=isolation,
                actor="bench",
                reason="benchmark",
            )

    def new_db(self) -> Path:
        """A fresh registry file at the latest migration (a copy of the template)."""
        path = self.root / "db" / f"registry-{next(self._dbs)}.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.template, path)
        return path

    def key(self) -> str:
        """An idempotency key never used before in this run."""
        return f"bench-{next(self._keys)}"

    def release(self, target: str) -> None:
        """One release of the no-op plugin through the shared handle, with a new key."""
        self.turnout.release(target, ARTIFACT, key=self.key())

    def close(self) -> None:
        self.turnout.close()
        if str(self.site) in sys.path:
            sys.path.remove(str(self.site))
