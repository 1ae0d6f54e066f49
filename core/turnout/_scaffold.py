"""``turnout plugin new``: render the copy-me releaser into a new plugin folder.

The template is a working plugin named ``template``: distribution ``turnout-template``, import
package ``turnout_template``, entry point ``template``. Being real Python, the repository
lints, type-checks and tests it like any other plugin, with no placeholder syntax to teach the
tools. Rendering renames those three spellings, in file contents and in paths, in one pass (so
a name that itself contains ``template`` is never renamed twice).

Where the template comes from: ``plugins/_template`` in a source checkout is its only copy;
the core's wheel carries it as ``turnout/_template`` (a hatch ``force-include``), which is the
one an installed turnout renders.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from turnout.errors import ConfigurationError, UsageError

PACKAGED = Path(__file__).parent / "_template"
"""Where the core's wheel puts the template."""

CHECKOUT = Path(__file__).parents[2] / "plugins" / "_template"
"""The template in a source checkout (an editable install runs from one)."""

_NAME = re.compile(r"[a-z]([a-z0-9_-]{0,62}[a-z0-9])?")
_TOKENS = re.compile(r"turnout_template|turnout-template|template")
# Left behind by running the template's own tests or builds in place; never rendered.
_SKIP_DIRS = frozenset(
    {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".venv", "build", "dist"}
)


@dataclass(frozen=True)
class NewPlugin:
    """A plugin folder rendered from the template."""

    path: Path
    plugin_id: str
    distribution: str
    package: str
    version: str
    files: list[str] = field(default_factory=list)


def names(name: str) -> dict[str, str]:
    """The template's spellings and what each becomes for plugin id ``name``.

    Raises:
        UsageError: ``name`` is not a plugin id this command accepts.
    """
    check_name(name)
    return {
        "turnout_template": f"turnout_{name.replace('-', '_')}",
        "turnout-template": f"turnout-{name}",
        "template": name,
    }


def check_name(name: str) -> None:
    """Refuse a plugin id that would not make a good entry point, distribution and package.

    Raises:
        UsageError: With the rule and a name that would do.
    """
    prefixed = name.startswith(("turnout-", "turnout_"))
    if _NAME.fullmatch(name) and not prefixed:
        return
    suggestion = re.sub(r"[^a-z0-9_-]+", "-", name.lower())
    suggestion = re.sub(r"^(turnout[-_])+", "", suggestion).lstrip("0123456789-_").rstrip("-_")
    fix = (
        f"try: turnout plugin new {suggestion}"
        if _NAME.fullmatch(suggestion)
        else "e.g. turnout plugin new static-site"
    )
    why = (
        "leave out the 'turnout-' prefix: the distribution is named turnout-NAME"
        if prefixed
        else "a plugin id is up to 64 lowercase letters, digits, '-' and '_', starting with a "
        "letter and ending with a letter or digit"
    )
    raise UsageError(f"invalid plugin name {name!r}: {why}; {fix}")


def template_root() -> Path:
    """The template this turnout renders: the packaged copy, else a checkout's.

    Raises:
        ConfigurationError: Neither exists (a broken installation).
    """
    for root in (PACKAGED, CHECKOUT):
        if (root / "pyproject.toml").is_file():
            return root
    raise ConfigurationError(
        f"turnout's plugin template is missing (looked in {PACKAGED} and {CHECKOUT}); "
        "reinstall turnout"
    )


def template_files(root: Path) -> list[Path]:
    """Every file of the template under ``root``, relative, sorted; caches left out."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        found += [
            Path(folder, f).relative_to(root) for f in sorted(files) if not f.endswith(".pyc")
        ]
    return found


def render(name: str, dest: Path) -> NewPlugin:
    """Write a new plugin with id ``name`` into ``dest``, which must not hold anything yet.

    The files are written into a temporary folder beside ``dest`` and moved into place in
    one rename, so a failure never leaves half a plugin behind.

    Raises:
        UsageError: ``name`` is invalid, or ``dest`` exists and is not an empty folder.
    """
    renames = names(name)
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        raise UsageError(
            f"{dest} already exists and is not an empty folder; nothing was written. Choose "
            "another with --dir PATH, or move it away first"
        )
    source = template_root()

    def rename(text: str) -> str:
        return _TOKENS.sub(lambda match: renames[match.group(0)], text)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    except OSError as exc:
        raise UsageError(
            f"cannot write into {dest.parent}: {exc.strerror or exc}; nothing was written. "
            "Choose a folder you can write to with --dir PATH"
        ) from None
    staging = scratch / "plugin"  # made by mkdir, so it gets the umask's mode, not 0700
    written: list[str] = []
    try:
        for relative in template_files(source):
            target = staging / rename(relative.as_posix())
            target.parent.mkdir(parents=True, exist_ok=True)
            text = (source / relative).read_text(encoding="utf-8")
            target.write_text(rename(text), encoding="utf-8")
            written.append(target.relative_to(staging).as_posix())
        # rename(2) replaces an empty folder; any other existing dest was refused above.
        staging.replace(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    project = tomllib.loads((dest / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return NewPlugin(
        path=dest,
        plugin_id=name,
        distribution=renames["turnout-template"],
        package=renames["turnout_template"],
        version=str(project["version"]),
        files=written,
    )
