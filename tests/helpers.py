"""Helpers for the tests: real wheels without a build backend, fixture plugins, call logs.

A wheel is a zip with a ``*.dist-info`` folder (METADATA, WHEEL, RECORD, entry_points.txt);
writing one directly takes a millisecond and gives pip and uv exactly what they install.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixture_plugins"


def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def build_wheel(
    dest: Path,
    name: str,
    version: str,
    files: Mapping[str, str | bytes],
    *,
    entry_points: Mapping[str, Mapping[str, str]] | None = None,
    requires: Iterable[str] = (),
) -> Path:
    """Write ``{name}-{version}-py3-none-any.whl`` into ``dest`` and return its path."""
    stem = f"{name.replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    contents: dict[str, bytes] = {
        path: data.encode() if isinstance(data, str) else data for path, data in files.items()
    }
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    metadata += [f"Requires-Dist: {requirement}" for requirement in requires]
    contents[f"{info}/METADATA"] = ("\n".join(metadata) + "\n").encode()
    contents[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: turnout-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    if entry_points:
        lines = []
        for group, points in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{ep_name} = {value}" for ep_name, value in points.items()]
        contents[f"{info}/entry_points.txt"] = ("\n".join(lines) + "\n").encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in contents.items()]
    record.append(f"{info}/RECORD,,")
    contents[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    dest.mkdir(parents=True, exist_ok=True)
    wheel = dest / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in contents.items():
            archive.writestr(path, data)
    return wheel


def install_into(target: Path, *requirements: str | Path) -> None:
    """Install wheels (or requirement specs) into the folder ``target`` with uv, else pip."""
    uv = shutil.which("uv") or _uv_from_package()
    args = [str(r) for r in requirements]
    if uv:
        command = [
            uv,
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            "--python",
            sys.executable,
            *args,
        ]
    else:
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            *args,
        ]
    subprocess.run(command, check=True, capture_output=True)


def _uv_from_package() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return None
    return find_uv_bin()


# (distribution, version, module file, plugin id)
FIXTURE_PLUGINS = [
    ("turnout-echo", "1.0.0", "echo.py", "echo"),
    ("turnout-broken", "0.1.0", "broken.py", "broken"),
    ("turnout-hookless", "0.1.0", "hookless.py", "hookless"),
    ("turnout-typo", "0.1.0", "typo.py", "typo"),
    ("turnout-badresult", "0.1.0", "badresult.py", "badresult"),
    ("turnout-plain", "0.1.0", "plain.py", "plain"),
    ("turnout-leaky", "0.1.0", "leaky.py", "leaky"),
    ("turnout-traced", "0.1.0", "traced.py", "traced"),
]


def fixture_wheel(dest: Path, distribution: str, version: str, source: str, plugin_id: str) -> Path:
    """A real wheel of one fixture plugin: module ``turnout_<id>`` with entry point ``<id>``."""
    module = f"turnout_{plugin_id}"
    code = (FIXTURES / source).read_text().replace("@VERSION@", version)
    return build_wheel(
        dest,
        distribution,
        version,
        {f"{module}.py": code},
        entry_points={"turnout.releasers": {plugin_id: module}},
        requires=["pluggy>=1.5"],
    )


def wheel_from_installed(dest: Path, distribution: str) -> Path:
    """A wheel of an installed distribution, rebuilt from its files (offline, exact version).

    Lets tests install plugins into the store with ``--no-index`` and a local wheelhouse.
    """
    from importlib import metadata

    dist = metadata.distribution(distribution)
    files: dict[str, str | bytes] = {}
    for file in dist.files or []:
        parts = file.parts
        if parts[0].endswith(".dist-info") or "__pycache__" in parts or parts[0] in ("..", "bin"):
            continue
        files[str(file)] = Path(str(dist.locate_file(file))).read_bytes()
    requires = dist.requires or []
    return build_wheel(dest, dist.metadata["Name"], dist.version, files, requires=requires)


def read_calls(path: Path) -> list[dict[str, object]]:
    """The calls the echo fixture plugin recorded, in order."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


POSTGRES_URL_ENV = "TURNOUT_TEST_POSTGRES_URL"
"""A PostgreSQL server for the tests, e.g. ``postgresql://postgres@127.0.0.1:5432/test``.

Tests parametrised over the registry's databases run their ``postgresql`` case only when it is
set; each such case gets a database of its own on that server, dropped afterwards."""


@contextlib.contextmanager
def fresh_postgres_registry(server_url: str) -> Iterator[str]:
    """:func:`fresh_postgres_database`, migrated to the latest revision: an empty registry."""
    from turnout.registry import Registry

    with fresh_postgres_database(server_url) as url:
        registry = Registry(url)
        try:
            registry.upgrade()
        finally:
            registry.close()
        yield url


@contextlib.contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server of ``server_url``; yield its URL; drop it.

    Connects (autocommit) to the URL's own database to run ``CREATE DATABASE`` and, afterwards,
    ``DROP DATABASE ... WITH (FORCE)``, which also ends connections a test left open.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    server = make_url(server_url)
    admin = server.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"turnout_test_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield server.set(drivername="postgresql", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            if conn.info.server_version >= 130000:
                drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            else:  # pragma: no cover - servers before 13 have no FORCE
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
                drop = sql.SQL("DROP DATABASE IF EXISTS {}")
            conn.execute(drop.format(sql.Identifier(name)))
