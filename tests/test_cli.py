"""The command line: every command, JSON output, refusals, and every exit code."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from helpers import read_calls

import turnout
from turnout import _db
from turnout.cli import cli

pytestmark = pytest.mark.usefixtures("plugin_site")


@pytest.fixture
def run(db_path: Path) -> object:
    runner = CliRunner()

    def invoke(
        *args: str, db: Path | str | None = db_path, env: dict[str, str] | None = None
    ) -> Result:
        prefix = ["--db", str(db)] if db is not None else []
        return runner.invoke(cli, [*prefix, *args], env=env, catch_exceptions=False)

    return invoke


def _json(result: Result) -> object:
    return json.loads(result.stdout)


def test_cli_help_lists_commands_and_exit_codes(run) -> None:
    result = run("--help", db=None)
    assert result.exit_code == 0
    for word in ("db", "target", "plugin", "release", "releases", "Exit codes", "78"):
        assert word in result.stdout


def test_cli_runs_as_python_m_turnout(db_path: Path) -> None:
    # The same command where the script is not on PATH; --help names it "turnout".
    command = [sys.executable, "-m", "turnout", "--db", str(db_path)]
    shown = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
    assert shown.stdout.startswith("Usage: turnout [OPTIONS] COMMAND [ARGS]...")
    subprocess.run([*command, "db", "upgrade"], capture_output=True, check=True)
    listed = subprocess.run([*command, "target", "list", "--json"], capture_output=True, check=True)
    assert json.loads(listed.stdout) == []
    missing = subprocess.run(
        [*command, "resolve", "nowhere"], capture_output=True, text=True, check=False
    )
    assert missing.returncode == 78  # exit codes pass through
    assert "nowhere" in missing.stderr


def test_cli_help_names_every_setting_the_core_reads(run) -> None:
    # The Celery app's settings are the Celery worker's (docs/deploying.md); the serve
    # command's token is in its own --help.
    core = Path(turnout.__file__).parent
    read = {
        name
        for path in core.glob("*.py")
        for name in re.findall(r'"(TURNOUT_[A-Z_]+)"', path.read_text())
        if not name.startswith("TURNOUT_CELERY_") and name != "TURNOUT_SERVE_TOKEN"
    }
    assert "TURNOUT_WORKER_IDLE_SECONDS" in read
    environment = run("--help", db=None).stdout.partition("Environment")[2]
    assert {name for name in read if name not in environment} == set()
    assert "TURNOUT_SERVE_TOKEN" in run("serve", "--help", db=None).stdout


def test_cli_db_upgrade_creates_and_reports(run, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.db"
    result = run("db", "upgrade", "--json", db=fresh)
    assert result.exit_code == 0
    assert _json(result)["after"] == _db.SCHEMA_HEAD
    assert _json(result)["before"] is None
    again = run("db", "upgrade", db=fresh)
    assert again.exit_code == 0
    assert "up to date" in again.stderr
    assert again.stdout == ""


def test_cli_not_migrated_database_exits_78(run, tmp_path: Path) -> None:
    (tmp_path / "empty.db").touch()
    result = run("target", "list", db=tmp_path / "empty.db")
    assert result.exit_code == 78
    assert "turnout db upgrade" in result.stderr
    missing = run("target", "list", db=tmp_path / "missing.db")
    assert missing.exit_code == 78
    assert "db upgrade" in missing.stderr
    assert not (tmp_path / "missing.db").exists()


def test_cli_db_from_environment_variable(run, db_path: Path) -> None:
    run("target", "set", "site", "echo@1.0.0")
    result = run(
        "target", "list", "--json", db=None, env={"TURNOUT_DATABASE_URL": f"sqlite:///{db_path}"}
    )
    assert result.exit_code == 0
    assert [t["name"] for t in _json(result)] == ["site"]


def test_cli_target_set_show_list_remove(run, tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text('token = "env:TOKEN"\nnested = { a = 1 }\n')
    result = run(
        "target",
        "set",
        "site",
        "echo@1.0.0",
        "--config-file",
        str(config_file),
        "--config",
        "keep=3",
        "--config",
        "flag=true",
        "--config",
        "name=plain text",
        "--timeout",
        "5",
        "--max-attempts",
        "2",
        "--reason",
        "launch",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    created = _json(result)
    assert created["config"] == {
        "token": "env:TOKEN",
        "nested": {"a": 1},
        "keep": 3,
        "flag": True,
        "name": "plain text",
    }
    assert (created["timeout"], created["max_attempts"], created["revision"]) == (5.0, 2, 1)
    shown = _json(run("target", "show", "site", "--json"))
    assert shown == {k: v for k, v in created.items() if k not in ("changed", "dry_run")}
    table = run("target", "show", "site")
    assert "echo@1.0.0" in table.stdout
    listed = run("target", "list")
    assert "site" in listed.stdout
    assert "echo@1.0.0" in listed.stdout
    removed = run("target", "remove", "site", "--reason", "done")
    assert removed.exit_code == 0
    assert "removed" in removed.stderr
    assert _json(run("target", "list", "--json")) == []


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["echo"], 2, "missing '@version'"),
        (["echo@>=1"], 2, "ranges"),
        (["echo@9.9.9"], 78, "turnout-echo==9.9.9"),
        (["echo@1.0"], 78, "a pin names a version as its distribution spells it: write echo@1.0.0"),
        (["nosuch@1.0.0"], 78, "no distribution"),
        (["broken@0.1.0"], 78, "failed to load"),
        (["echo@1.0.0", "--config", "invalid=1"], 78, "rejected the config"),
        (["echo@1.0.0", "--config", "novalue"], 2, "key=value"),
        (["echo@1.0.0", "--max-attempts", "0"], 2, "from 1 to 100"),
        (["echo@1.0.0", "--timeout", "-1"], 2, "above 0"),
        (["echo@1.0.0", "--config-file", "/nonexistent/c.json"], 2, "cannot read config file"),
    ],
)
def test_cli_target_set_refusals_leave_the_row_unchanged(
    run, args: list[str], code: int, fragment: str
) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", "a=1")
    before = _json(run("target", "show", "site", "--json"))
    result = run("target", "set", "site", *args)
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr
    assert _json(run("target", "show", "site", "--json")) == before


def test_cli_plugin_list_shows_environment_plugins_and_their_targets(run) -> None:
    run("target", "set", "site", "echo@1.0.0")
    rows = _json(run("plugin", "list", "--json"))
    echo = next(r for r in rows if r["plugin"] == "echo")
    assert echo == {
        "plugin": "echo",
        "version": "1.0.0",
        "distribution": "turnout-echo",
        "source": "environment",
        "status": "installed",
        "location": echo["location"],
        "entry_point": "turnout_echo",
        "targets": ["site"],
    }
    assert "turnout-echo" in run("plugin", "list").stdout


def test_cli_release_success_then_same_key_runs_nothing(run, calls_file: Path) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    first = run(
        "release", "site", "dist/site.tgz", "--key", "b-1", "--context", "customer=acme", "--json"
    )
    assert first.exit_code == 0, first.stderr
    record = _json(first)
    assert record["status"] == "succeeded"
    assert record["context"] == {"customer": "acme"}
    assert record["result"]["version"] == "1.0.0"
    second = run("release", "site", "dist/site.tgz", "--key", "b-1", "--context", "customer=acme")
    assert second.exit_code == 0
    assert "nothing ran" in second.stderr
    assert record["id"] in second.stdout
    assert len(read_calls(calls_file)) == 1


def test_cli_releases_list_and_show(run, calls_file: Path) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    ids = [_json(run("release", "site", "a", "--key", f"k{i}", "--json"))["id"] for i in range(3)]
    listed = _json(run("releases", "--json", "--limit", "2"))
    assert [r["id"] for r in listed] == ids[::-1][:2]
    shown = _json(run("releases", "show", ids[0], "--json"))
    assert shown["idempotency_key"] == "k0"
    assert ids[0] in run("releases", "--target", "site").stdout
    missing = run("releases", "show", "nope")
    assert missing.exit_code == 2
    assert "turnout releases" in missing.stderr


@pytest.mark.parametrize(
    ("config", "args", "code", "fragment"),
    [
        ([], ["--key", "ok-1"], 0, ""),
        (["--config", "fail_with=permanent"], ["--key", "perm-1"], 1, "failed after 1 attempt"),
        (
            ["--config", "fail_with=connection", "--max-attempts", "2"],
            ["--key", "tr-1"],
            75,
            "after 2 attempt",
        ),
        ([], ["--key", "has space"], 2, "invalid idempotency key"),
        ([], ["--key", "ok-2", "--context", "nokey"], 2, "key=value"),
        ([], [], 2, "Missing option '--key'"),
    ],
)
def test_cli_release_exit_codes(
    run, calls_file: Path, config: list[str], args: list[str], code: int, fragment: str
) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}", *config)
    result = run("release", "site", "a.tgz", *args)
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr


def test_cli_release_inline_plugin_exiting_0_does_not_exit_0(run, calls_file: Path) -> None:
    # sys.exit(0) in an inline plugin, without a result: recorded failed, and the job runner
    # sees the failure's exit code, not the 0 the plugin asked for (F4).
    config = ["--config", f"calls={calls_file}", "--config", "fail_with=exit0"]
    run("target", "set", "site", "echo@1.0.0", "--isolation", "inline", *config)
    result = run("release", "site", "a.tgz", "--key", "exit-1")
    assert result.exit_code == 1
    shown = _json(run("releases", "--json"))
    assert [(r["status"], r["error_type"]) for r in shown] == [("failed", "SystemExit")]
    assert len(read_calls(calls_file)) == 1


def test_cli_sigterm_grace_then_interrupt_and_a_second_sigterm_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os
    import signal
    import time

    from turnout.cli import _finish_on_sigterm
    from turnout.errors import ConfigurationError, Interrupted

    def terminated(times: int) -> None:
        """SIGTERM ``times`` times inside, then work for 30 s."""
        with _finish_on_sigterm():
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("TURNOUT_TERM_GRACE", "0.2")
    started = time.monotonic()
    with pytest.raises(Interrupted):
        terminated(1)  # the grace starts; the work goes on until it ends
    assert time.monotonic() - started < 20  # cut at the end of the grace, not of the work
    monkeypatch.setenv("TURNOUT_TERM_GRACE", "60")
    started = time.monotonic()
    with pytest.raises(Interrupted, match="stopped by a second SIGTERM"):
        terminated(2)  # a second one: now
    assert time.monotonic() - started < 20  # not at the end of the grace, nor of the work
    assert signal.getsignal(signal.SIGTERM) == before  # put back on the way out
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    monkeypatch.setenv("TURNOUT_TERM_GRACE", "soon")
    with pytest.raises(
        ConfigurationError, match="TURNOUT_TERM_GRACE must be a number of seconds 0"
    ):
        terminated(0)


def test_cli_release_key_mismatch_exits_65(run, calls_file: Path) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    run("release", "site", "a.tgz", "--key", "m-1")
    result = run("release", "site", "b.tgz", "--key", "m-1")
    assert result.exit_code == 65
    assert "different request (different artifact)" in result.stderr
    assert len(read_calls(calls_file)) == 1


def test_cli_release_unknown_target_exits_78(run) -> None:
    result = run("release", "nowhere", "a.tgz", "--key", "k")
    assert result.exit_code == 78
    assert "unknown target 'nowhere'" in result.stderr


def test_cli_release_in_progress_exits_75(run, db_path: Path, calls_file: Path) -> None:
    from turnout.refs import PluginRef
    from turnout.registry import Registry
    from turnout.releases import Claim, Ledger, fingerprint

    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    registry = Registry(str(db_path))
    spec = registry.get_target("site")
    # Another runner holds the claim under a live lease: its row is committed and running.
    claim = Ledger(registry.engine).claim(
        target="site",
        key="busy-1",
        fingerprint=fingerprint("site", "a.tgz", PluginRef("echo", "1.0.0"), spec.config, {}),
        plugin_ref=spec.plugin_ref,
        artifact="a.tgz",
        context={},
    )
    registry.close()
    assert isinstance(claim, Claim)
    result = run("release", "site", "a.tgz", "--key", "busy-1")
    assert result.exit_code == 75
    assert "still in progress" in result.stderr
    assert read_calls(calls_file) == []


def test_cli_database_unreachable_exits_75(run, tmp_path: Path) -> None:
    result = run("target", "list", db="postgresql://turnout@127.0.0.1:1/nowhere")
    assert result.exit_code == 75
    assert "unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    folder = run("target", "list", db=tmp_path)  # retrying a folder never helps: 78
    assert folder.exit_code == 78
    assert "it is a folder" in folder.stderr
    other = run("target", "list", db="mysql://u@h/db")
    assert other.exit_code == 2
    assert "SQLite or PostgreSQL" in other.stderr


@pytest.mark.slow
def test_cli_console_script_end_to_end(db_path: Path, calls_file: Path) -> None:
    """The installed `turnout` script, as a job runner calls it, in its own process."""
    script = shutil.which("turnout", path=str(Path(sys.executable).parent)) or "turnout"
    env = {**os.environ, "TURNOUT_DATABASE_URL": str(db_path)}

    def turnout(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([script, *args], capture_output=True, text=True, env=env, check=False)

    assert (
        turnout("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}").returncode
        == 0
    )
    first = turnout("release", "site", "a.tgz", "--key", "e2e-1", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "succeeded"
    assert turnout("release", "site", "a.tgz", "--key", "e2e-1").returncode == 0
    assert turnout("release", "site", "b.tgz", "--key", "e2e-1").returncode == 65
    assert turnout("release", "nowhere", "a.tgz", "--key", "x").returncode == 78
    assert turnout("release", "site", "a.tgz").returncode == 2
    assert len(read_calls(calls_file)) == 1


def test_cli_empty_listings_say_what_to_do(run) -> None:
    targets = run("target", "list")
    assert targets.exit_code == 0
    assert targets.stdout == ""
    assert "turnout target set" in targets.stderr
    releases = run("releases")
    assert releases.stdout == ""
    assert "no releases recorded" in releases.stderr


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("releases", "--since", "nan"), "--since must be a positive duration"),
        (("releases", "--since", "inf"), "--since reaches back at most 36500d"),
        (("stats", "--since", "1e400"), "--since reaches back at most 36500d"),
        (("replay", "--since", "99999999d"), "--since reaches back at most 36500d"),
        (("stats", "--since", ""), "--since needs a value"),
        (("releases", "--customer", ""), "--customer needs a value"),
        (("releases", "--target", " "), "--target needs a value"),
        (("target", "set", "t", "echo@1.0.0", "--timeout", "inf"), "timeout must be"),
        (("target", "set", "t", "echo@1.0.0", "--timeout", "nan"), "timeout must be"),
        (("target", "set", "t", "echo@1.0.0", "--timeout", "1e308"), "at most 86400"),
        (("target", "set", "t", "echo@1.0.0", "--max-attempts", "9" * 20), "from 1 to 100"),
        (("target", "set", "", "echo@1.0.0"), "a non-empty printable string"),
        (("release", "site", "a.tgz", "--key", "k", "--context", "customer="), "non-empty"),
        (("release", "site", "a.tgz", "--key", "k", "--context", "customer= x"), "surrounding"),
        (("release", "site", "a.tgz", "--key", "k", "--context", "plan=a\x1bb"), "printable"),
        (("reconcile", "r1", "--as", "failed", "--target", "site"), "not with a RELEASE_ID"),
    ],
)
def test_cli_bad_values_are_usage_errors_and_change_nothing(
    run, args: tuple[str, ...], said: str, calls_file: Path
) -> None:
    # Not a traceback (exit 1, "failed permanently"), not a config error blamed on the plugin,
    # not a retryable 75: exit 2 with what a good value looks like, before anything is written.
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    before = run("history", "site", "--json").stdout
    result = run(*args)
    assert (result.exit_code, said in result.stderr) == (2, True), result.stderr
    assert run("history", "site", "--json").stdout == before
    assert run("target", "list", "--json").stdout.count('"name"') == 1
    assert read_calls(calls_file) == []


def test_cli_history_of_a_target_that_never_was_is_unknown(run) -> None:
    result = run("history", "nowhere")
    assert result.exit_code == 78
    assert "unknown target 'nowhere'" in result.stderr


def test_cli_tables_print_terminal_escapes_as_text(run) -> None:
    # A reason (or any recorded text) holding an escape sequence does not recolour, move or
    # clear the operator's terminal: tables print it escaped, as log lines do (S9).
    run("target", "set", "site", "echo@1.0.0", "--reason", "evil\x1b[31m red\x07")
    shown = run("history", "site").stdout
    assert "\x1b" not in shown
    assert "\x07" not in shown
    assert "evil\\x1b[31m red\\x07" in shown


def test_cli_stats_by_the_same_dimension_twice_groups_once(run, calls_file: Path) -> None:
    run("target", "set", "site", "echo@1.0.0", "--config", f"calls={calls_file}")
    run("release", "site", "a.tgz", "--key", "k1")
    once = json.loads(run("stats", "--by", "version", "--json").stdout)
    twice = json.loads(run("stats", "--by", "version,version", "--by", "version", "--json").stdout)
    assert twice == once
    assert twice["by"] == ["version"]


def test_cli_config_file_with_a_value_json_cannot_carry_is_refused(run, tmp_path: Path) -> None:
    toml = tmp_path / "config.toml"
    toml.write_text("keep = 1979-05-27T07:32:00Z\n")
    result = run("target", "set", "site", "echo@1.0.0", "--config-file", str(toml))
    assert result.exit_code == 2
    assert "quote a TOML date or time" in result.stderr
    assert run("target", "list", "--json").stdout.strip() == "[]"


def test_cli_route_messages_name_the_target_and_plan_usage_names_the_command(run) -> None:
    run("target", "set", "site", "echo@1.0.0")
    run("route", "add", "site", "--customer", "acme", "--to", "echo@1.0.0")
    clash = run(
        "route", "add", "site", "--customer", "acme", "--customer", "globex", "--to", "echo@1.0.0"
    )
    assert clash.exit_code == 2
    assert "remove it first: turnout route remove site r1" in clash.stderr
    missing = run("route", "remove", "site", "--plan", "pro")
    assert "see: turnout route list site" in missing.stderr
    planned = run("plan", "route", "add", "site", "--bogus")
    assert planned.exit_code == 2
    assert "Usage: turnout route add" in planned.stderr
    assert "turnout turnout" not in planned.stderr


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


def _parse(args: list[str]) -> None:
    """Parse ``turnout ARGS`` down to its command, as the CLI would, without running it."""
    ctx = cli.make_context("turnout", args)
    command: click.Command = cli
    while isinstance(command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:  # a group that runs by itself (turnout releases)
            return
        name, sub, rest = command.resolve_command(ctx, rest)
        assert sub is not None
        assert name is not None
        ctx = sub.make_context(name, rest, parent=ctx)
        command = sub


def test_cli_every_help_example_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An example that names an option the command does not have (--to for --to-revision)
    # teaches a command that fails: each one is parsed as the CLI would parse it.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugins.lock").touch()  # the files examples name, where they must exist
    examples = []
    for path in _commands(cli):
        shown = CliRunner().invoke(cli, [*path, "--help"]).stdout
        for line in shown.partition("Examples:")[2].partition("Options:")[0].splitlines():
            command = re.split(r"\s{2,}|#", line.strip())[0]  # without its explanation
            if command.startswith("turnout "):
                examples.append(command)
    assert len(examples) >= 20, examples
    for example in examples:
        args = [a for a in shlex.split(example)[1:] if a != "RELEASE_ID"]
        if args[:1] == ["reconcile"] and "--as" in args:
            args.insert(1, "some-release-id")
        _parse(args)
