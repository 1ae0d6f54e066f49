"""docs/writing-plugins.md, followed to the letter: every command in the guide runs here.

The test reads the guide itself. In document order it writes the ``turnout-hello`` files its
walkthrough shows (a fenced block whose preceding line names the file: ``toml``/``python``/
``markdown`` blocks are whole files, ``diff`` blocks are edits to one), and runs each line of
every ``sh`` block as a shell session would: ``cd`` moves, ``turnout ...`` runs the real CLI in a
subprocess against a registry and a store of this test's own, and the plugin's test line runs
the plugin's own tests. Every ``turnout`` line must have an expectation below and every
expectation must be met, so a command that stops working, changes, or is added to the guide
without a test here fails it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from turnout.releases import plugin_key
from turnout.store import find_uv

GUIDE = Path(__file__).parents[1] / "docs" / "writing-plugins.md"
PLUGIN = "turnout-hello"
# The sections whose labelled blocks are turnout-hello's files.
FILE_SECTIONS = ("From an empty folder", "A second version beside the first")
# What the guide names that a test must not touch, and what stands in for it.
SPOOL = "/var/spool/hello"
ARTIFACT = "dist/site.tgz"

# The one block that is not run here: `turnout plugin new` renders the template into a plugin
# that installs, passes its own tests and releases; tests/test_plugin_new.py covers that
# whole block (test_plugin_new_plugin_installs_passes_its_tests_and_releases and the rest).
EXCLUDED_BLOCKS = {"turnout plugin new bucket": "covered by tests/test_plugin_new.py"}

# The guide's "run its tests in a virtual environment of its own" line. Creating a venv and
# installing into it would need an index; here the plugin's own tests run unchanged with this
# interpreter (which has pytest and pluggy) and PYTHONPATH=src, the same code an editable
# install puts on the path.
PLUGIN_TESTS = "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest"


@dataclass
class Block:
    lang: str
    text: str
    section: str
    label: str | None  # the file the line before the fence names, if any


def _blocks(markdown: str) -> list[Block]:
    blocks: list[Block] = []
    section = ""
    previous = ""
    lines = iter(markdown.splitlines())
    for line in lines:
        if line.startswith("## "):
            section = line[3:].strip()
        if line.startswith("```"):
            lang = line[3:].strip()
            body: list[str] = []
            for inner in lines:
                if inner.startswith("```"):
                    break
                body.append(inner)
            names = re.findall(r"`([\w./-]+\.(?:toml|py|md))`", previous)
            label = names[0] if len(names) == 1 and previous.rstrip().endswith(":") else None
            blocks.append(Block(lang, "\n".join(body) + "\n", section, label))
            previous = ""
            continue
        if line.strip():
            previous = line
    return blocks


def _commands(block: Block) -> list[str]:
    """The block's command lines, comments and blank lines dropped."""
    return [c for c in (_strip_comment(line) for line in block.text.splitlines()) if c]


def _strip_comment(line: str) -> str:
    """The line without its ``# comment``, its quoting kept as written."""
    cut = len(line)
    in_single = in_double = False
    for index, char in enumerate(line):
        if char == "'" and not in_double:
            in_single = not in_single
        elif char == '"' and not in_single:
            in_double = not in_double
        elif (
            char == "#" and not (in_single or in_double) and (index == 0 or line[index - 1] == " ")
        ):
            cut = index
            break
    return line[:cut].strip()


def _apply_diff(path: Path, diff: str) -> None:
    old = [line[1:] for line in diff.splitlines() if line[:1] in ("-", " ")]
    new = [line[1:] for line in diff.splitlines() if line[:1] in ("+", " ")]
    text = path.read_text()
    before, after = "\n".join(old) + "\n", "\n".join(new) + "\n"
    assert text.count(before) == 1, f"the guide's diff to {path.name} does not apply:\n{diff}"
    path.write_text(text.replace(before, after))


def _rows(output: str) -> list[list[str]]:
    """The body rows of the rich tables in ``output`` (box-drawing or ASCII borders)."""
    rows = []
    for raw in output.splitlines():
        line = raw.strip()
        if line[:1] in ("│", "|") and line[-1:] in ("│", "|"):
            rows.append([cell.strip() for cell in re.split(r"[│|]", line)[1:-1]])
    return rows


def _fields(output: str) -> dict[str, str]:
    """A two-column field/value table as a dict."""
    return {row[0]: row[1] for row in _rows(output) if len(row) == 2}


@dataclass
class Run:
    argv: list[str]
    stdout: str
    stderr: str


Check = Callable[[Run], None]


@dataclass
class Session:
    """A shell session following the guide: a current folder and the CLI's environment."""

    cwd: Path
    env: dict[str, str]
    turnout: list[str]
    substitutions: dict[str, str]
    ran: list[str] = field(default_factory=list)

    def turnout_line(self, line: str) -> Run:
        argv = shlex.split(line)
        assert argv[0] == "turnout"
        for old, new in self.substitutions.items():
            argv = [arg.replace(old, new) for arg in argv]
        done = subprocess.run(
            [*self.turnout, *argv[1:]],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{line}\nexit {done.returncode}\n{done.stdout}{done.stderr}"
        self.ran.append(line)
        return Run(argv, done.stdout, done.stderr)

    def plugin_tests(self) -> None:
        env = {k: v for k, v in self.env.items() if k != "PYTEST_ADDOPTS"}
        env["PYTHONPATH"] = str(self.cwd / "src")
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 passed" in done.stdout, done.stdout


def _turnout_command() -> list[str]:
    """The turnout script installed beside this interpreter (a venv's, or nox's)."""
    script = shutil.which("turnout", path=str(Path(sys.executable).parent))
    if script:
        return [script]
    return [sys.executable, "-c", "from turnout.cli import main; main()"]


def _expectations(spool: Path, artifact: Path) -> dict[str, deque[Check]]:
    """What each command of the guide must do, in the order the guide runs it."""

    def ok(run: Run) -> None:
        pass

    def hello_versions(*versions: str) -> Check:
        def check(run: Run) -> None:
            found = sorted(row[1] for row in _rows(run.stdout) if row[:1] == ["hello"])
            assert found == list(versions), run.stdout
            rows = {row[1]: row for row in _rows(run.stdout) if row[:1] == ["hello"]}
            assert rows["1.0.0"][2:4] == ["turnout-hello", "store"], run.stdout

        return check

    def installed(ref: str) -> Check:
        def check(run: Run) -> None:
            assert f"{ref} (turnout-hello) installed" in run.stderr, run.stderr

        return check

    def resolves(ref: str, rule: str) -> Check:
        def check(run: Run) -> None:
            fields = _fields(run.stdout)
            assert (fields["plugin"], fields["rule"]) == (ref, rule), run.stdout

        return check

    def released(ref: str, key: str, first_line: str, customer: str | None = None) -> Check:
        def check(run: Run) -> None:
            fields = _fields(run.stdout)
            assert (fields["plugin"], fields["status"]) == (ref, "succeeded"), run.stdout
            called_with = plugin_key(key, {"customer": customer} if customer else {})
            assert (spool / f"{called_with}.txt").read_text() == f"{first_line}\n"

        return check

    def releases(run: Run) -> None:
        by_key = {row[4]: row for row in _rows(run.stdout) if len(row) == 9}
        assert {k: (r[2], r[3], r[5]) for k, r in by_key.items()} == {
            "build-1": ("hello@1.0.0", "", "succeeded"),
            "build-2": ("hello@2.0.0", "acme", "succeeded"),
            "build-3": ("hello@1.0.0", "globex", "succeeded"),
        }, run.stdout

    def stats(run: Run) -> None:
        rows = {row[0]: row for row in _rows(run.stdout)}
        assert rows["hello@1.0.0"][1:4] == ["2", "2", "0"], run.stdout
        assert rows["hello@2.0.0"][1:4] == ["1", "1", "0"], run.stdout

    def plan_rollback(run: Run) -> None:
        assert ["hello@2.0.0", "hello@1.0.0", "1", "acme", ""] in _rows(run.stdout), run.stdout
        assert "nothing was written" in run.stderr

    def rolled_back(run: Run) -> None:
        assert "rolled back: hello@1.0.0 (revision 3)" in run.stderr, run.stderr

    def history(run: Run) -> None:
        rows = [row for row in _rows(run.stdout) if len(row) == 5]
        assert [row[0] for row in rows] == ["1", "2", "3"], run.stdout
        assert [row[3] for row in rows] == [
            "",
            "acme tries 2.0.0",
            "2.0.0 breaks acme's note parser",
        ], run.stdout
        assert 'route.r1: null -> "customer=acme -> hello@2.0.0"' in rows[1][4]
        assert 'route.r1: "customer=acme -> hello@2.0.0" -> null' in rows[2][4]

    v1, v2 = f"released {artifact}", f"hello from 2.0.0: released {artifact}"
    table: dict[str, list[Check]] = {
        "turnout db upgrade": [ok],
        "turnout plugin install ./turnout-hello": [
            installed("hello@1.0.0"),
            installed("hello@2.0.0"),
        ],
        "turnout plugin list": [hello_versions("1.0.0"), hello_versions("1.0.0", "2.0.0")],
        "turnout target set greetings hello@1.0.0 --config inbox=/var/spool/hello": [ok],
        "turnout release greetings dist/site.tgz --key build-1": [
            released("hello@1.0.0", "build-1", v1)
        ],
        (
            "turnout route add greetings --customer acme --to hello@2.0.0"
            ' --reason "acme tries 2.0.0"'
        ): [ok],
        "turnout resolve greetings --context customer=acme": [
            resolves("hello@2.0.0", "customer=acme"),
            resolves("hello@1.0.0", "target default"),  # after the rollback
        ],
        "turnout resolve greetings --context customer=globex": [
            resolves("hello@1.0.0", "target default")
        ],
        "turnout release greetings dist/site.tgz --key build-2 --context customer=acme": [
            released("hello@2.0.0", "build-2", v2, "acme")
        ],
        "turnout release greetings dist/site.tgz --key build-3 --context customer=globex": [
            released("hello@1.0.0", "build-3", v1, "globex")
        ],
        "turnout releases --target greetings": [releases],
        "turnout stats --by version": [stats],
        "turnout plan rollback greetings": [plan_rollback],
        'turnout rollback greetings --reason "2.0.0 breaks acme\'s note parser"': [rolled_back],
        "turnout history greetings": [history],
    }
    return {line: deque(checks) for line, checks in table.items()}


@pytest.mark.slow
def test_every_command_of_the_writing_guide_works(
    tmp_path: Path, wheelhouse: Path, home: Path
) -> None:
    # The store builds a plugin folder with uv (turnout depends on it; pip is only a fallback).
    # Offline: uv honours its UV_* variables even under the store's --no-config, so the
    # plugin's pluggy comes from the wheelhouse, and its build backend (hatchling, in turnout's
    # test extra) from this environment instead of an isolated build environment.
    assert find_uv() is not None
    assert importlib.util.find_spec("hatchling"), "turnout's test extra brings hatchling"
    work = tmp_path / "work"
    work.mkdir()
    spool = tmp_path / "spool" / "hello"
    artifact = tmp_path / "dist" / "site.tgz"
    artifact.parent.mkdir()
    artifact.write_bytes(b"not really a tarball")
    env = {
        **os.environ,
        "TURNOUT_HOME": str(home),
        "TURNOUT_DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}",
        "TURNOUT_ACTOR": "author",
        "PYTHONIOENCODING": "utf-8",
        "UV_NO_INDEX": "1",
        "UV_OFFLINE": "1",
        "UV_FIND_LINKS": str(wheelhouse),
        "UV_NO_BUILD_ISOLATION": "1",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(wheelhouse),
    }
    session = Session(
        cwd=work,
        env=env,
        turnout=_turnout_command(),
        substitutions={SPOOL: str(spool), ARTIFACT: str(artifact)},
    )
    expectations = _expectations(spool, artifact)

    blocks = _blocks(GUIDE.read_text())
    guide_lines = [line for b in blocks if b.lang == "sh" for line in _commands(b)]
    guide_turnout = [line for line in guide_lines if line.startswith("turnout ")]
    excluded: list[str] = []
    written: set[str] = set()
    for block in blocks:
        if block.section in FILE_SECTIONS and block.label and block.lang != "sh":
            path = work / PLUGIN / block.label
            if block.lang == "diff":
                _apply_diff(path, block.text)
            else:
                assert block.lang in ("toml", "python", "markdown"), block.lang
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.text)
            written.add(block.label)
            continue
        if block.lang != "sh":
            continue
        commands = _commands(block)
        if commands[0] in EXCLUDED_BLOCKS:
            excluded += [line for line in commands if line.startswith("turnout ")]
            continue
        for line in commands:
            if line.startswith("cd "):
                session.cwd = (session.cwd / line[3:].strip()).resolve()
                assert session.cwd.is_dir(), line
            elif line == PLUGIN_TESTS:
                session.plugin_tests()
            elif line.startswith("turnout "):
                checks = expectations.get(line)
                assert checks, f"the guide runs {line!r}, which this test does not expect"
                checks.popleft()(session.turnout_line(line))
            else:
                pytest.fail(f"the guide runs {line!r}, which this test does not know")

    # Every file of the walkthrough was written, every expectation met, every line run.
    assert written == {
        "pyproject.toml",
        "src/turnout_hello/__init__.py",
        "tests/test_hello.py",
        "CHANGELOG.md",
    }
    assert {line: len(left) for line, left in expectations.items() if left} == {}
    assert excluded == ["turnout plugin new bucket"]
    assert Counter(session.ran) == Counter(guide_turnout) - Counter(excluded)
    assert len(session.ran) == len(guide_turnout) - len(excluded)
    assert session.cwd == work
    # Both versions sit side by side in the store, each in an environment of its own.
    assert len(list((home / "envs").iterdir())) == 2
