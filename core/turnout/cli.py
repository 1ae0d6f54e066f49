"""The ``turnout`` command line: a thin layer over :mod:`turnout.runtime`.

Data goes to stdout (a table, or JSON with ``--json``); messages go to stderr. Every
:class:`~turnout.errors.TurnoutError` becomes its message on stderr and its exit code. Heavy
modules (the database stack, rich) are imported inside commands so that ``--help`` stays fast.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from turnout import __version__, _secrets, _settings, views
from turnout.errors import (
    EXIT_CONFIG,
    EXIT_DATAERR,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    ConfigurationError,
    Interrupted,
    TurnoutError,
    UnknownTargetError,
    UsageError,
)

if TYPE_CHECKING:
    from turnout.registry import TargetChange, TargetSpec
    from turnout.releases import ReleaseRecord
    from turnout.routing import Move
    from turnout.runtime import Turnout

EXIT_CODES_HELP = """\b
Exit codes:
  0   success
  1   the release failed permanently (recorded); a plugin install, sync or verify
      failed
  2   usage error: bad option, malformed ref, key or context
  65  the idempotency key was used for a different request; nothing ran
  75  temporary failure: failed transiently after retries, still in progress
      elsewhere, unknown (a runner died mid-call, or was stopped by SIGTERM; see
      turnout reconcile), a stale --expect-revision, or the database is
      unreachable; retry later
  78  configuration error: unknown target, plugin version not installed or not
      loadable, config rejected, no registry at that path, database not migrated

\b
Environment (defaults in brackets):
  TURNOUT_DATABASE_URL         the registry, when --db is not given
  TURNOUT_HOME                 the plugin store folder on this machine
  TURNOUT_ACTOR                who makes a change, for the history [OS user]
  TURNOUT_LEASE_SECONDS        how long a claim holds without a heartbeat [60]
  TURNOUT_TERM_GRACE           seconds a release under way may take to finish
                               after SIGTERM [10]; then it is recorded unknown
                               and turnout exits 75 (ask again, same key)
  TURNOUT_WORKER_IDLE_SECONDS  a worker idle this long is stopped [300]
  TURNOUT_WORKER_MEMORY_MB     a worker's memory limit [2048]
  TURNOUT_SQLITE_WAL_LIMIT_MB  a SQLite registry's WAL is emptied past it [16]
  OTEL_*                       OpenTelemetry export, with turnout[otel]
"""
TERM_GRACE_ENV = "TURNOUT_TERM_GRACE"
DEFAULT_TERM_GRACE = 10.0


class _Group(click.Group):
    """A group that turns turnout's errors into a message and the error's exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TurnoutError as exc:
            _say(f"error: {exc}", style="red")
            ctx.exit(exc.exit_code)
        except Interrupted as exc:
            if exc.midway:
                then = (
                    "the release under way is recorded unknown (it may have deployed): ask "
                    "again with the same key, or run turnout reconcile"
                )
            else:
                then = "every release it finished is recorded; run it again for the rest"
            _say(f"interrupted: {exc}; {then}", style="red")
            ctx.exit(exc.exit_code)


@contextlib.contextmanager
def _finish_on_sigterm() -> Iterator[Callable[[], None]]:
    """While inside, SIGTERM lets the release under way finish for ``TURNOUT_TERM_GRACE``
    seconds, then raises :class:`~turnout.errors.Interrupted` in it (it is recorded
    ``unknown``, and the command exits 75); a second SIGTERM raises it at once. Outside,
    SIGTERM does what it did before.

    Yields a function for commands of several releases to call between two of them: once
    SIGTERM came, it raises ``Interrupted`` there, so that no other release starts.

    A job runner stopping its job (a Kubernetes pod deleted, a CI job cancelled) sends SIGTERM,
    then SIGKILL some seconds later: set the grace below that.
    """
    import signal
    import threading

    grace = _settings.number(TERM_GRACE_ENV, DEFAULT_TERM_GRACE, zero=True)
    told = False

    def between() -> None:
        if told:
            raise Interrupted(grace, midway=False)

    if threading.current_thread() is not threading.main_thread():
        yield between  # signals reach the main thread only
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise Interrupted(grace)

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal told
        if grace == 0 or told:
            raise Interrupted(None if told else grace)  # no grace, or a second SIGTERM: now
        told = True
        # Straight to fd 2: an inline plugin's output capture may hold sys.stderr right now.
        note = f"SIGTERM: letting the release under way finish, for at most {grace:g} s"
        if _log_format[0] == "json":
            from turnout._logging import json_line

            note = json_line("info", "turnout.cli", note)
        os.write(2, note.encode() + b"\n")
        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, grace)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield between
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, previous)


_log_format: list[str] = ["text"]


def _say(message: str, *, style: str | None = None) -> None:
    """A message for the person at the terminal, on stderr (a JSON line with --log-format
    json, so that all of stderr parses)."""
    if _log_format[0] == "json":
        from turnout._logging import json_line

        click.echo(
            json_line("error" if style == "red" else "info", "turnout.cli", message), err=True
        )
    elif style and sys.stderr.isatty():
        click.secho(message, fg=style, err=True)
    else:
        click.echo(message, err=True)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _print_table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not markup: a "[red]" in a plugin's error message is printed as written, and
        # a terminal escape in a context value or a reason as the text \x1b (RELIABILITY S9).
        table.add_row(*(Text(_cell(cell)) for cell in row))
    # A pipe gets whole rows (a table is as wide as its content); a terminal gets its width.
    width = None if sys.stdout.isatty() else 10_000
    Console(soft_wrap=False, width=width).print(table)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if text.isprintable() else _secrets.escape(text)


def _handle(ctx: click.Context) -> Turnout:
    """The :class:`Turnout` for ``--db``, made on first use."""
    from turnout.runtime import Turnout

    obj: dict[str, Any] = ctx.ensure_object(dict)
    if "turnout" not in obj:
        _telemetry(ctx)
        obj["turnout"] = Turnout(obj.get("db"))
        ctx.call_on_close(obj["turnout"].close)
    handle: Turnout = obj["turnout"]
    return handle


_configured: list[bool] = []


def _telemetry(ctx: click.Context) -> None:
    """Set up OpenTelemetry from ``OTEL_*`` (once per process: its providers are global),
    flushed when the command ends."""
    if _configured or not any(os.environ.get(name) for name in _settings.OTEL_ASKING):
        return
    from turnout import telemetry

    try:
        shutdown = telemetry.configure()
    except RuntimeError as exc:
        raise ConfigurationError(str(exc)) from None
    _configured.append(True)
    if shutdown is not None:
        ctx.call_on_close(shutdown)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
reason_option = click.option("--reason", default="", help="Why; kept in the target's history.")
actor_option = click.option("--actor", help="Who; default $TURNOUT_ACTOR, else the OS user.")


def edit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every routing change takes: compare-and-set, dry run, who and why.

    The command receives them as one ``edit`` dict of :meth:`Turnout.edit_target`'s keyword
    arguments (and ``as_json``).
    """

    @functools.wraps(command)
    def run(
        *args: Any,
        expect_revision: int | None,
        dry_run: bool,
        history: str,
        reason: str,
        actor: str | None,
        **kwargs: Any,
    ) -> Any:
        edit = {
            "expect_revision": expect_revision,
            "dry_run": dry_run,
            "history": views.duration(history, "--history"),
            "reason": reason,
            "actor": actor,
        }
        return command(*args, edit=edit, **kwargs)

    options = [
        click.option(
            "--expect-revision",
            type=click.IntRange(min=0),
            help="Refuse the edit unless the target is at this revision (0: it never existed).",
        ),
        click.option(
            "--dry-run",
            is_flag=True,
            help="Check the change and show its blast radius (who, seen in recent "
            "releases, would move to which version); write nothing.",
        ),
        click.option(
            "--history",
            default="30d",
            show_default=True,
            metavar="DURATION",
            help="How far back --dry-run looks for customers and projects: 12h, 30d.",
        ),
        reason_option,
        actor_option,
        json_option,
    ]
    for option in reversed(options):
        run = option(run)
    return run


@click.group(
    cls=_Group, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--db",
    metavar="URL-OR-PATH",
    envvar="TURNOUT_DATABASE_URL",
    help="Registry database: a SQLAlchemy URL (sqlite:///…, postgresql://…) or a SQLite file "
    "path. Default: $TURNOUT_DATABASE_URL, else sqlite:///registry.db.",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="warning",
    show_default=True,
    help="How much turnout logs to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as text, or as JSON objects (with release_id, target and plugin).",
)
@click.version_option(__version__, prog_name="turnout")
@click.pass_context
def cli(ctx: click.Context, db: str | None, log_level: str, log_format: str) -> None:
    """Send every release to the releaser version its operators chose.

    A registry maps each release target to an exact plugin version (plugin@version); turnout
    runs exactly that version, retries only transient errors, never releases twice for one
    idempotency key, and records every release.
    """
    from turnout import _logging

    ctx.ensure_object(dict)["db"] = db
    _logging.configure(log_level, log_format)
    _log_format[0] = log_format


# db ----------------------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """Create and migrate the registry database."""


@db.command("upgrade")
@json_option
@click.pass_context
def db_upgrade(ctx: click.Context, as_json: bool) -> None:
    """Apply the migrations shipped with turnout (creates the database if needed)."""
    registry = _handle(ctx).registry
    before, after = registry.upgrade()
    if as_json:
        _print_json({"database": registry.display_url, "before": before, "after": after})
    elif before == after:
        _say(f"registry {registry.display_url} is up to date (revision {after})")
    else:
        _say(f"registry {registry.display_url} upgraded from {before or 'empty'} to {after}")


# target ------------------------------------------------------------------------------------


def _parse_config(pairs: Sequence[str], config_file: Path | None) -> dict[str, Any] | None:
    if not pairs and config_file is None:
        return None
    config: dict[str, Any] = {}
    if config_file is not None:
        import tomllib

        try:
            text = config_file.read_text(encoding="utf-8")
            loaded = tomllib.loads(text) if config_file.suffix == ".toml" else json.loads(text)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read config file {config_file}: {exc}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"config file {config_file} must hold an object/table")
        try:
            json.dumps(loaded)
        except (TypeError, ValueError) as exc:
            raise UsageError(
                f"config file {config_file} holds a value JSON cannot carry ({exc}); use "
                "strings, numbers, booleans, lists and tables (quote a TOML date or time)"
            ) from None
        config.update(loaded)
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--config expects key=value, got {pair!r}")
        try:
            config[key] = json.loads(raw)
        except ValueError:
            config[key] = raw
    return config


@cli.group()
def target() -> None:
    """Release targets: which plugin version serves each, with what config and policy."""


@target.command("set")
@click.argument("name")
@click.argument("plugin_ref", metavar="PLUGIN@VERSION")
@click.option(
    "--config",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="A config value (repeatable). VALUE is read as JSON when it parses (3, true, "
    '["a"]), else as a string. Secrets as references: env:NAME or file:/path. Given, '
    "--config and --config-file replace the target's whole config: give every value.",
)
@click.option(
    "--config-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Config as a JSON object, or a TOML table for *.toml; --config values override it.",
)
@click.option("--timeout", type=float, help="Seconds one attempt may take (default 60).")
@click.option("--max-attempts", type=int, help="Attempts for transient errors (default 3).")
@click.option(
    "--isolation",
    type=click.Choice(["process", "inline"]),
    help="process (default): a worker process of its own, the store's copy when there is "
    "one; inline: in the caller's process, for trusted plugins in turnout's environment.",
)
@click.option(
    "--idempotent/--not-idempotent",
    default=None,
    help="Whether turnout may call the plugin again with the same key after a runner died "
    "mid-call, when the plugin has no turnout_probe (default: not; the release is then "
    "recorded 'unknown' for a human to check).",
)
@edit_options
@click.pass_context
def target_set(
    ctx: click.Context,
    name: str,
    plugin_ref: str,
    pairs: tuple[str, ...],
    config_file: Path | None,
    timeout: float | None,
    max_attempts: int | None,
    isolation: str | None,
    idempotent: bool | None,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Create target NAME or point its default at PLUGIN@VERSION (an exact pin: directory@1.0.0).

    Refused, with the target left as it was, when the version is not installed or the plugin
    rejects the config. Options not given keep the target's current values; routes stay. The
    config is one value: --config and --config-file replace it whole.

    \b
    Examples:
      turnout target set docs directory@1.0.0 --config root=/srv/www --config keep=5
      turnout target set hooks webhook@2.0.1 --config-file hooks.toml --timeout 30
      turnout target set docs directory@1.1.0 --dry-run     # who would move, nothing written
    """
    change = _handle(ctx).set_target(
        name,
        plugin_ref,
        config=_parse_config(pairs, config_file),
        max_attempts=max_attempts,
        timeout=timeout,
        isolation=isolation,
        idempotent=idempotent,
        **edit,
    )
    _report_change(change, as_json, "updated")


def _report_change(change: TargetChange, as_json: bool, verb: str) -> None:
    """What a target edit did (or, dry, would do): JSON on stdout, or lines on stderr."""
    now = change.target
    if as_json:
        _print_json(views.change(change))
    elif change.dry_run:
        _report_plan(change)
    elif not change.changed:
        _say(f"target {now.name!r} already is {now.plugin_ref} with that config; nothing changed")
    elif change.before is None:
        _say(f"target {now.name!r} created: {now.plugin_ref} (revision {now.revision})")
    else:
        was = change.before.plugin_ref
        moved = f"{was} -> {now.plugin_ref}" if was != now.plugin_ref else str(now.plugin_ref)
        _say(f"target {now.name!r} {verb}: {moved} (revision {now.revision})")


def _report_plan(change: TargetChange) -> None:
    """A dry run: what would change, and the blast radius, on stderr and stdout."""
    from turnout.registry import changes

    before = change.before.snapshot() if change.before else None
    diff = changes(before, change.target.snapshot())
    if not change.changed:
        _say(f"dry run: target {change.target.name!r} would not change")
        return
    _say(f"dry run: target {change.target.name!r} would become revision {change.target.revision}")
    for field, (old, new) in diff.items():
        _say(f"  {field}: {json.dumps(old)} -> {json.dumps(new)}")
    _print_moves(change.moves or [])


def _print_moves(moves: Sequence[Move]) -> None:
    """A dry run's blast radius: a table on stdout, and that nothing was written."""
    if not moves:
        _say("nobody seen in the release history would get another version; nothing was written")
        return
    _print_table(
        "blast radius (releases seen in the history window)",
        ["from", "to", "contexts", "customers", "projects"],
        [
            (
                m.before or "(none)",
                m.after or "(none)",
                m.contexts,
                _some(sorted(m.customers)),
                _some(sorted(m.projects)),
            )
            for m in moves
        ],
    )
    _say("dry run: nothing was written")


def _some(values: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(values[:limit])
    return f"{shown} (+{len(values) - limit} more)" if len(values) > limit else shown


@target.command("show")
@click.argument("name")
@json_option
@click.pass_context
def target_show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one target, with its routes."""
    spec = _handle(ctx).registry.get_target(name)
    if as_json:
        _print_json(views.target(spec))
        return
    rows = [
        (key, json.dumps(value) if key == "config" else value)
        for key, value in views.target(spec).items()
        if key != "routes"
    ]
    rows += [(f"route {route.id}", route.describe()) for route in spec.routes]
    _print_table(None, ["field", "value"], rows)


@target.command("list")
@json_option
@click.pass_context
def target_list(ctx: click.Context, as_json: bool) -> None:
    """List every target."""
    targets = _handle(ctx).registry.list_targets()
    if as_json:
        _print_json([views.target(t) for t in targets])
        return
    if not targets:
        _say("no targets yet; create one with: turnout target set NAME PLUGIN@VERSION")
        return
    _print_table(
        "targets",
        ["name", "plugin", "isolation", "max attempts", "timeout", "revision"],
        [
            (t.name, t.plugin_ref, t.isolation, t.max_attempts, t.timeout, t.revision)
            for t in targets
        ],
    )


@target.command("remove")
@click.argument("name")
@edit_options
@click.pass_context
def target_remove(
    ctx: click.Context,
    name: str,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Remove a target. Its history and its releases are kept."""
    change = _handle(ctx).remove_target(name, **edit)
    spec = change.target
    if as_json:
        data: dict[str, Any] = {"removed": views.target(spec), "dry_run": change.dry_run}
        if change.moves is not None:
            data["moves"] = [move.to_dict() for move in change.moves]
        _print_json(data)
    elif change.dry_run:
        _say(f"dry run: target {name!r} (revision {spec.revision}) would be removed")
        _print_moves(change.moves or [])
    else:
        _say(f"target {name!r} removed (it pointed to {spec.plugin_ref})")


@cli.command("history")
@click.argument("name")
@json_option
@click.pass_context
def history_command(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show every revision of a target, oldest first: who, when, why, and what changed.

    \b
    Examples:
      turnout history docs --json
    """
    rows = views.history(_handle(ctx).registry, name)
    if not rows:
        raise UnknownTargetError(name)
    if as_json:
        _print_json(rows)
        return
    _print_table(
        f"history of {name}",
        ["revision", "at", "actor", "reason", "changes"],
        [
            (
                r["revision"],
                r["at"][:19],
                r["actor"],
                r["reason"],
                "removed"
                if r["target"] is None
                else "; ".join(
                    f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, (a, b) in r["changes"].items()
                ),
            )
            for r in rows
        ],
    )


@cli.command("rollback")
@click.argument("name")
@click.option(
    "--to-revision",
    type=click.IntRange(min=1),
    help="The revision to copy (default: the one before the current).",
)
@edit_options
@click.pass_context
def rollback_command(
    ctx: click.Context,
    name: str,
    to_revision: int | None,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Restore an earlier revision of a target, routes included, as a new revision.

    History is never rewritten. Every plugin version the restored routing names must still be
    installed and accept the config; the edit is refused, unchanged, if someone changed the
    target meanwhile.

    \b
    Examples:
      turnout rollback docs --to-revision 3 --dry-run   who would move back, nothing written
      turnout rollback docs --reason "2.0.0 fails for acme"
    """
    change = _handle(ctx).rollback(
        name,
        to_revision=to_revision,
        **edit,
    )
    _report_change(change, as_json, "rolled back")


# route, resolve, plan ----------------------------------------------------------------------


Selector = tuple[str | None, tuple[str, ...]]


def _selector_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--customer/--project/--plan/--channel, given to the command as one ``selector``."""

    @functools.wraps(command)
    def run(
        *args: Any,
        customers: tuple[str, ...],
        projects: tuple[str, ...],
        plans: tuple[str, ...],
        channels: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        given = [
            (name, values)
            for name, values in (
                ("customer", customers),
                ("project", projects),
                ("plan", plans),
                ("channel", channels),
            )
            if values
        ]
        if len(given) > 1:
            raise UsageError(
                "a route selects on one attribute: give --customer, --project, --plan or "
                "--channel (repeat it for several values), not several of them"
            )
        selector: Selector = given[0] if given else (None, ())
        return command(*args, selector=selector, **kwargs)

    for name in reversed(("customer", "project", "plan", "channel")):
        run = click.option(
            f"--{name}",
            f"{name}s",
            multiple=True,
            metavar="VALUE",
            help=f"Select releases whose context has this {name} (repeatable: any of them).",
        )(run)
    return run


@cli.group()
def route() -> None:
    """Routes: send some releases of a target to another plugin version.

    \b
    Resolution order, first match wins:
      1. customer, then project pin      turnout route add web --customer acme --to …
      2. plan, then channel rule         turnout route add web --plan free --to …
      3. weighted split on everyone      turnout route split web --to a@2=10 --to a@1=90
      4. the target's default            turnout target set web a@1
    Every change writes a revision (turnout history); --dry-run previews who would move.
    """


@route.command("add")
@click.argument("target_name", metavar="TARGET")
@_selector_options
@click.option("--to", "to", required=True, metavar="PLUGIN@VERSION", help="Where it goes.")
@edit_options
@click.pass_context
def route_add(
    ctx: click.Context,
    target_name: str,
    selector: Selector,
    to: str,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Send TARGET's releases for a customer, project, plan or channel to PLUGIN@VERSION.

    The same selector again re-points its route. Refused, unchanged, when the version is not
    installed or rejects the target's config, or when another route already selects a value.
    """
    attribute, values = selector
    if attribute is None:
        raise UsageError("say what the route selects: --customer, --project, --plan or --channel")
    change = _handle(ctx).add_route(target_name, attribute, values, to, **edit)
    _report_routes(change, as_json)


def _parse_weights(pairs: Sequence[str]) -> list[tuple[str, float]]:
    weights = []
    for pair in pairs:
        ref, eq, weight = pair.rpartition("=")
        try:
            weights.append((ref, float(weight)))
        except ValueError:
            eq = ""
        if not eq or not ref:
            raise UsageError(f"--to expects PLUGIN@VERSION=WEIGHT (a percentage), got {pair!r}")
    return weights


@route.command("split")
@click.argument("target_name", metavar="TARGET")
@click.option(
    "--to",
    "pairs",
    multiple=True,
    required=True,
    metavar="PLUGIN@VERSION=WEIGHT",
    help="A ref and its percentage (repeat; the weights add up to 100).",
)
@click.option(
    "--key",
    default="customer",
    show_default=True,
    help="The context attribute that keeps each release on its side of the split.",
)
@_selector_options
@edit_options
@click.pass_context
def route_split(
    ctx: click.Context,
    target_name: str,
    pairs: tuple[str, ...],
    key: str,
    selector: Selector,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Split TARGET's releases between versions by weight: a sticky canary.

    Each value of --key hashes into one of 2^32 buckets with the split's own salt, so a
    customer stays on its side. Run it again with new weights to ramp: only the buckets of
    versions that shrink move, to versions that grow. Without a selector the split covers
    everyone no pin or rule matched; releases without the key fall through to the default.
    """
    attribute, values = selector
    change = _handle(ctx).split(
        target_name,
        _parse_weights(pairs),
        key=key,
        selector=attribute,
        values=values,
        **edit,
    )
    _report_routes(change, as_json)


@route.command("remove")
@click.argument("target_name", metavar="TARGET")
@click.argument("route_id", required=False, metavar="[ROUTE]")
@_selector_options
@click.option("--split", "the_split", is_flag=True, help="Remove the split on everyone.")
@edit_options
@click.pass_context
def route_remove(
    ctx: click.Context,
    target_name: str,
    route_id: str | None,
    selector: Selector,
    the_split: bool,
    edit: dict[str, Any],
    as_json: bool,
) -> None:
    """Remove a route of TARGET: by its id (see route list), by one value it selects, or --split.

    Releases it matched go back to the next rule, or to the target's default.
    """
    attribute, values = selector
    asked = (route_id is not None) + (attribute is not None) + the_split
    if asked != 1 or len(values) > 1:
        raise UsageError(
            f"name one route: its id (turnout route list {target_name}), one selector value "
            "such as --customer acme, or --split"
        )
    change = _handle(ctx).remove_route(
        target_name,
        route_id,
        selector=attribute,
        value=values[0] if values else None,
        **edit,
    )
    _report_routes(change, as_json)


def _report_routes(change: TargetChange, as_json: bool) -> None:
    if as_json or change.dry_run:
        _report_change(change, as_json, "")
        return
    now = change.target
    if not change.changed:
        _say(f"target {now.name!r}: the routes already are so; nothing changed")
        return
    _say(f"target {now.name!r} routes changed (revision {now.revision})")
    _print_routes(now)


def _print_routes(spec: TargetSpec) -> None:
    rows = [(r.id, r.rule, r.describe()) for r in spec.routes]
    rows.append(("", "target default", f"everyone else -> {spec.plugin_ref}"))
    _print_table(
        f"routes of {spec.name} at revision {spec.revision}", ["route", "rule", "sends"], rows
    )


@route.command("list")
@click.argument("target_name", metavar="TARGET")
@json_option
@click.pass_context
def route_list(ctx: click.Context, target_name: str, as_json: bool) -> None:
    """List TARGET's routes in the order they are tried, then its default."""
    spec = _handle(ctx).registry.get_target(target_name)
    if as_json:
        _print_json(views.routes(spec))
        return
    _print_routes(spec)


@cli.command("resolve")
@click.argument("target_name", metavar="TARGET")
@click.option(
    "--context",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Request attribute (repeatable): customer, plan, project, channel, …",
)
@json_option
@click.pass_context
def resolve_command(
    ctx: click.Context, target_name: str, pairs: tuple[str, ...], as_json: bool
) -> None:
    """Show which plugin version a release to TARGET with this context would get, and why.

    The same decision a release makes: the matched rule, the split bucket, the revision.

    \b
    Examples:
      turnout resolve docs --context customer=acme --context plan=pro
    """
    decision = _handle(ctx).resolve(target_name, _parse_context(pairs))
    record = decision.record()
    if as_json:
        _print_json({"target": target_name, **record})
        return
    rows: list[tuple[str, Any]] = [
        ("plugin", record["plugin"]),
        ("rule", record["rule"]),
        ("route", record["route"]),
        ("revision", record["revision"]),
    ]
    if record["bucket"] is not None:
        share = record["bucket"] / 2**32
        rows.append(("bucket", f"{record['bucket']} of 2^32 ({share:.2%}) by {record['key']}"))
    _print_table(None, ["field", "value"], rows)


@cli.command(
    "plan",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def plan_command(ctx: click.Context, command: tuple[str, ...]) -> None:
    """Preview a routing change: run COMMAND as a dry run and show its blast radius.

    \b
    COMMAND is any routing change, with its options:
      turnout plan route split web --to echo@2.0.0=10 --to echo@1.0.0=90
      turnout plan route add web --plan free --to echo@2.0.0
      turnout plan target set web echo@1.1.0
      turnout plan target remove web
      turnout plan rollback web
    It shows which customers and projects seen in the last 30 days of releases (--history)
    would move from which version to which. Nothing is written.
    """
    changes: set[tuple[str, ...]] = {("route", "add"), ("route", "split"), ("route", "remove")}
    changes |= {("target", "set"), ("target", "remove"), ("rollback",)}
    if not command or command[0] in ("-h", "--help"):
        click.echo(ctx.get_help())
        return
    if tuple(command[:2]) not in changes and tuple(command[:1]) not in changes:
        raise UsageError(
            f"turnout plan previews a routing change (route add|split|remove, target "
            f"set|remove, rollback), not {' '.join(command[:2])!r}"
        )
    root = ctx.find_root()
    options = ["--log-level", root.params["log_level"]]
    if root.params.get("db"):
        options += ["--db", root.params["db"]]
    args = [*options, *command, "--dry-run"]
    # Its own root (the handle is shared through obj): under this context as a parent, its
    # usage errors would read "turnout turnout route add".
    sub_ctx = cli.make_context("turnout", args, obj=root.obj)
    with sub_ctx:
        cli.invoke(sub_ctx)


# plugin ------------------------------------------------------------------------------------


@cli.group()
def plugin() -> None:
    """Releaser plugins turnout can run."""


@plugin.command("list")
@json_option
@click.pass_context
def plugin_list(ctx: click.Context, as_json: bool) -> None:
    """List releasers in the store and in turnout's own environment, with the targets using each.

    A store version's status is "installed", or "missing" when the registry knows it but this
    machine's store does not have its environment (run: turnout plugin install).
    """
    from turnout import environment

    handle = _handle(ctx)
    rows: list[dict[str, Any]] = []
    try:
        stored = handle.registry.plugin_versions("store")
        targets = handle.registry.list_targets()
    except (ConfigurationError, ConnectionError) as exc:
        stored, targets = [], None
        _say(f"note: store plugins and targets not shown: {exc}")
    in_store = {(row.plugin_id, row.version) for row in stored}

    def copy_used(t: TargetSpec) -> str:
        # Inline runs the environment's copy; a worker runs the store's when there is one.
        ref = (t.plugin_ref.plugin_id, t.plugin_ref.version)
        return "store" if t.isolation == "process" and ref in in_store else "environment"

    def users(ref: str, source: str) -> list[str] | None:
        if targets is None:
            return None
        return [t.name for t in targets if str(t.plugin_ref) == ref and copy_used(t) == source]

    for row in stored:
        ref = f"{row.plugin_id}@{row.version}"
        rows.append(
            {
                "plugin": row.plugin_id,
                "version": row.version,
                "distribution": row.distribution,
                "source": "store",
                "status": "installed" if handle.store.has(row.location) else "missing",
                "location": str(handle.store.path(row.location)),
                "entry_point": row.entry_point,
                "targets": users(ref, "store"),
            }
        )
    for found in environment.scan():
        rows.append(
            {
                "plugin": found.plugin_id,
                "version": found.version,
                "distribution": found.distribution,
                "source": environment.SOURCE,
                "status": "installed",
                "location": found.location,
                "entry_point": found.entry_point,
                "targets": users(str(found.ref), environment.SOURCE),
            }
        )
    rows.sort(key=lambda r: (r["plugin"], r["version"], r["source"]))
    if as_json:
        _print_json(rows)
        return
    if not rows:
        _say("no releasers installed; add one with: turnout plugin install DISTRIBUTION==VERSION")
        return
    _print_table(
        "plugins",
        ["plugin", "version", "distribution", "source", "status", "targets"],
        [
            (
                r["plugin"],
                r["version"],
                r["distribution"],
                r["source"],
                r["status"],
                ", ".join(r["targets"] or []),
            )
            for r in rows
        ],
    )


@plugin.command("install")
@click.argument("spec", required=False)
@click.option(
    "--find-links",
    "find_links",
    multiple=True,
    metavar="DIR-OR-URL",
    help="Look for wheels here too (repeatable), e.g. a local wheelhouse.",
)
@click.option("--index-url", metavar="URL", help="The package index to use instead of PyPI.")
@click.option("--no-index", is_flag=True, help="Use no index: only --find-links.")
@click.option(
    "--require-hashes",
    is_flag=True,
    help="Hash-checking mode: every requirement in -r LOCKFILE pinned with ==, with its "
    "--hash, wheels only. A wrong or missing hash refuses the install before any code runs.",
)
@click.option(
    "-r",
    "--requirement",
    "lockfile",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A requirements file to install (with --require-hashes: a hash-pinned lock file).",
)
@json_option
@click.pass_context
def plugin_install(
    ctx: click.Context,
    spec: str | None,
    find_links: tuple[str, ...],
    index_url: str | None,
    no_index: bool,
    require_hashes: bool,
    lockfile: Path | None,
    as_json: bool,
) -> None:
    """Install a plugin version into the store, in an environment of its own.

    SPEC is anything pip accepts: NAME==VERSION, a wheel file, a project folder. Versions
    already installed stay untouched; installing the same version again does nothing.

    \b
    Examples:
      turnout plugin install 'turnout-webhook==2.0.1' --find-links /opt/wheels --no-index
      turnout plugin install ./dist/turnout_hello-1.0.0-py3-none-any.whl
      turnout plugin install -r plugins.lock --require-hashes
    """
    from turnout.store import InstallRequest

    if spec is None and lockfile is None:
        raise UsageError("give a SPEC (NAME==VERSION, a wheel, a folder) or -r LOCKFILE")
    if require_hashes and lockfile is None:
        raise UsageError("--require-hashes needs -r LOCKFILE listing every pinned, hashed wheel")
    request = InstallRequest(
        spec=spec,
        find_links=find_links,
        index_url=index_url,
        no_index=no_index,
        requirements=lockfile,
        require_hashes=require_hashes,
    )
    handle = _handle(ctx)
    with _status(f"installing {request.describe()} into {handle.store.envs}"):
        outcomes = handle.install_plugin(request)
    if as_json:
        _print_json(
            [
                {
                    "plugin": o.plugin.ref.plugin_id,
                    "version": o.plugin.ref.version,
                    "distribution": o.plugin.distribution,
                    "digest": o.digest,
                    "location": str(handle.store.path(o.digest)),
                    "status": o.status,
                }
                for o in outcomes
            ]
        )
        return
    for o in outcomes:
        what = "installed" if o.status == "installed" else "already installed; nothing changed"
        _say(f"{o.plugin.ref} ({o.plugin.distribution}) {what}: {handle.store.path(o.digest)}")


@plugin.command("remove")
@click.argument("plugin_ref", metavar="PLUGIN@VERSION")
@click.option("--force", is_flag=True, help="Remove it even while targets point to it.")
@click.pass_context
def plugin_remove(ctx: click.Context, plugin_ref: str, force: bool) -> None:
    """Remove a plugin version from the store (refused while a target uses it)."""
    row = _handle(ctx).remove_plugin(plugin_ref, force=force)
    _say(f"{row.plugin_id}@{row.version} removed from the store")


@plugin.command("verify")
@click.argument("plugin_ref", metavar="[PLUGIN@VERSION]", required=False)
@json_option
@click.pass_context
def plugin_verify(ctx: click.Context, plugin_ref: str | None, as_json: bool) -> None:
    """Re-check store environments against the file hashes recorded at install.

    Exits 1 when any file changed, went missing or appeared.
    """
    report = _handle(ctx).verify_plugins(plugin_ref)
    if as_json:
        _print_json([{"plugin": ref, "ok": not p, "problems": p} for ref, p in report.items()])
    else:
        for ref, problems in report.items():
            _say(f"{ref}: ok" if not problems else f"{ref}: {len(problems)} problem(s)")
            for problem in problems[:50]:
                _say(f"  {problem}")
    if any(report.values()):
        ctx.exit(1)


@plugin.command("sync")
@click.option(
    "--check",
    is_flag=True,
    help="Install nothing; exit 75 when a referenced version is missing here (a readiness "
    "probe: not ready yet, run sync), 78 when one is unknown to the registry.",
)
@click.option(
    "--find-links",
    "find_links",
    multiple=True,
    metavar="DIR-OR-URL",
    help="Look for wheels here (repeatable); without --index-url, only here.",
)
@click.option("--index-url", metavar="URL", help="The package index to use instead of PyPI.")
@json_option
@click.pass_context
def plugin_sync(
    ctx: click.Context,
    check: bool,
    find_links: tuple[str, ...],
    index_url: str | None,
    as_json: bool,
) -> None:
    """Install every plugin version a target or route references, as the registry recorded it.

    Each missing version is installed from the requirement recorded at its first install and
    must give the very same files (the recorded environment digest); other files are refused
    and nothing is recorded. Versions already here are "present"; running it again installs
    nothing. Versions of turnout's own environment are reported, not installed.

    \b
    Exits 0 when every referenced version is here (or now installed); 1 when an install failed
    or gave other files; 78 when a version is unknown to the registry; with --check, 75 when
    one is missing on this machine (not ready yet: run turnout plugin sync).

    \b
    Examples:
      turnout plugin sync --find-links /opt/wheels
      turnout plugin sync --check                    readiness: 75 while one is missing
    """

    handle = _handle(ctx)
    verb = "checking" if check else "syncing"
    with _status(f"{verb} referenced plugin versions into {handle.store.envs}"):
        results = handle.sync_plugins(check=check, find_links=find_links, index_url=index_url)
    if as_json:
        _print_json([r.to_dict() for r in results])
    elif not results:
        _say("no target or route references a plugin version; nothing to sync")
    else:
        _print_table(
            "plugin sync",
            ["plugin", "version", "status", "targets", "detail"],
            [
                (r.ref.plugin_id, r.ref.version, r.status, ", ".join(r.targets), r.detail or "")
                for r in results
            ],
        )
        installed = sum(r.status == "installed" for r in results)
        here = all(r.status in ("present", "environment") for r in results)
        if not check and installed == 0 and here:
            _say("nothing to install: every referenced store version is already here")
        elif not check:
            _say(f"{installed} plugin version(s) installed")
    statuses = {r.status for r in results}
    if statuses & {"failed", "mismatch"}:
        ctx.exit(EXIT_FAILED)
    if "unknown" in statuses:
        ctx.exit(EXIT_CONFIG)
    if "missing" in statuses:
        ctx.exit(EXIT_TEMPFAIL)


@plugin.command("new")
@click.argument("name")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    help="Create the plugin in this folder instead of ./turnout-NAME.",
)
@json_option
def plugin_new(name: str, directory: Path | None, as_json: bool) -> None:
    """Create a releaser plugin NAME from turnout's template, ready to test and install.

    NAME is the plugin id (lowercase letters, digits, '-' and '_'): the distribution is
    turnout-NAME and the package turnout_NAME. The plugin records each release as a JSON line
    in a file; its tests pass as generated. Refused, writing nothing, when the folder exists
    and is not empty.
    """
    import shlex

    from turnout import _scaffold

    _scaffold.check_name(name)  # before NAME becomes part of a path
    made = _scaffold.render(name, directory or Path(f"turnout-{name}"))
    folder = shlex.quote(str(made.path))
    steps = [
        f"cd {folder}",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest",
        "turnout plugin install .",
        f"turnout target set TARGET {made.plugin_id}@{made.version} "
        "--config path=/absolute/path/releases.jsonl",
        "turnout release TARGET ARTIFACT --key KEY",
    ]
    if as_json:
        _print_json(
            {
                "path": str(made.path.resolve()),
                "plugin": made.plugin_id,
                "version": made.version,
                "distribution": made.distribution,
                "package": made.package,
                "files": made.files,
                "next": steps,
            }
        )
        return
    _say(
        f"created {made.path}: plugin {made.plugin_id}@{made.version}, distribution "
        f"{made.distribution}, package {made.package} ({len(made.files)} files)"
    )
    _say("next:")
    for step in steps:
        _say(f"  {step}")


@contextlib.contextmanager
def _status(message: str) -> Iterator[None]:
    """A spinner on stderr while something slow runs (a plain line when not a terminal)."""
    if not sys.stderr.isatty():
        _say(message + " ...")
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(message):
        yield


# release -----------------------------------------------------------------------------------


def _parse_context(pairs: Sequence[str]) -> dict[str, str]:
    context: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise UsageError(f"--context expects key=value, got {pair!r}")
        context[key] = value
    return context


def _print_release(record: ReleaseRecord, as_json: bool) -> None:
    """The request, the decision, the outcome, every attempt, the timings, the output tail."""
    if as_json:
        _print_json(record.to_dict())
        return
    rows: list[tuple[str, Any]] = [
        ("release", record.id),
        ("target", record.target),
        ("plugin", record.plugin_ref),
        ("key", record.idempotency_key),
        ("artifact", record.artifact),
        ("context", json.dumps(record.context) if record.context else ""),
    ]
    if record.plugin_key != record.idempotency_key:
        rows.append(("plugin's key", f"{record.plugin_key} (the key, made unique per customer)"))
    if record.replay_of:
        rows.append(("replay of", record.replay_of))
    if record.decision:
        rows.append(("decision", views.decision_text(record.decision)))
    rows += [("status", record.status.value), ("attempts", record.attempts)]
    if record.result is not None:
        rows.append(("result", json.dumps(record.result, sort_keys=True)))
    if record.error:
        retry = {True: " (transient)", False: " (permanent)", None: ""}[record.retryable]
        rows.append(("error", record.error + retry))
    if record.error_type:
        rows.append(("error type", record.error_type))
    rows += _timings(record)
    _print_table(None, ["field", "value"], rows)
    if record.attempt_log:
        _print_table(
            "attempts",
            ["#", "started", "took", "outcome", "error"],
            [
                (
                    entry.get("attempt"),
                    str(entry.get("started_at", ""))[11:23],
                    views.seconds_text(entry.get("duration")),
                    entry.get("outcome"),
                    entry.get("error", "") + (" (transient)" if entry.get("retryable") else ""),
                )
                for entry in record.attempt_log
            ],
        )
    if record.output:
        lines = record.output.splitlines()
        shown = lines[-OUTPUT_LINES:]
        click.echo(f"plugin output (last {len(shown)} of {len(lines)} stored lines):")
        for line in shown:
            click.echo("  " + _secrets.escape(line))


OUTPUT_LINES = 40
"""Lines of a release's stored plugin output that ``releases show`` prints (``--json``: all)."""


def _timings(record: ReleaseRecord) -> list[tuple[str, str]]:
    """Started, finished, total; with an attempt log: time in attempts and waiting between."""
    rows = [("started", record.started_at.isoformat(timespec="milliseconds"))]
    if record.finished_at is not None:
        rows.append(("finished", record.finished_at.isoformat(timespec="milliseconds")))
        rows.append(("duration", views.seconds_text(record.duration)))
    log = record.attempt_log or []
    if log:
        working = sum(float(entry.get("duration") or 0) for entry in log)
        rows.append(("in attempts", views.seconds_text(working)))
        if record.duration is not None and len(log) > 1:
            rows.append(
                ("waiting, recording", views.seconds_text(max(0.0, record.duration - working)))
            )
    return rows


@cli.command("release")
@click.argument("target_name", metavar="TARGET")
@click.argument("artifact")
@click.option("--key", required=True, help="Idempotency key: the same key never releases twice.")
@click.option(
    "--context",
    "pairs",
    multiple=True,
    metavar="KEY=VALUE",
    help="Request attribute (repeatable): customer, plan, project, channel, …",
)
@json_option
@click.pass_context
def release_command(
    ctx: click.Context,
    target_name: str,
    artifact: str,
    key: str,
    pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Release ARTIFACT (a path or URL) to TARGET with the plugin version its row names.

    Transient errors are retried with the same key; a second call with the same key and the
    same request prints the recorded outcome and runs nothing, except after a transient
    failure (exit 75), which it resumes: more attempts, same key, same plugin version, even if
    the target was re-pointed since (turnout replay moves a release to the version in force).

    On SIGTERM the release under way may finish for TURNOUT_TERM_GRACE seconds (default 10)
    and exits as it would have; after that it is recorded unknown (it may have deployed) and
    turnout exits 75: the same key again takes it over and asks the plugin's probe.

    \b
    Examples:
      turnout release docs dist/site.tar.gz --key build-1842
      turnout release docs dist/site.tar.gz --key build-1842 --context customer=acme --json
    """
    from turnout.errors import ReleaseFailedError

    handle = _handle(ctx)
    context = _parse_context(pairs)
    try:
        with _finish_on_sigterm():
            record = handle.release(target_name, artifact, key=key, context=context)
    except ReleaseFailedError as exc:
        _print_release(exc.release, as_json)
        raise
    except Interrupted:
        # A script reading --json gets the record as it was left (unknown), as it would
        # for any other outcome; the message goes to stderr as usual.
        left = handle.ledger.find(target_name, key, context.get("customer")) if as_json else None
        if left is not None:
            _print_release(left, as_json)
        raise
    if record.reused:
        _say(f"key {key!r} was released before (release {record.id}); nothing ran")
    _print_release(record, as_json)


# releases ----------------------------------------------------------------------------------


def _filter_options(
    default_since: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--since``, ``--target``, ``--plugin`` and ``--customer``, given to the command as one
    ``filters`` dict of :meth:`Ledger.recent`/:meth:`Ledger.outcomes` keyword arguments."""
    return functools.partial(_with_filters, default_since=default_since)


def _with_filters(command: Callable[..., Any], default_since: str | None) -> Callable[..., Any]:
    @functools.wraps(command)
    def run(
        *args: Any,
        since: str | None,
        target_name: str | None,
        plugin_ref: str | None,
        customer: str | None,
        **kwargs: Any,
    ) -> Any:
        given = {
            "--since": since,
            "--target": target_name,
            "--plugin": plugin_ref,
            "--customer": customer,
        }
        for option, value in given.items():
            if value is not None and not value.strip():
                raise UsageError(f"{option} needs a value; leave the option out for no filter")
        filters = views.release_filters(
            since=since, target=target_name, plugin=plugin_ref, customer=customer
        )
        return command(*args, filters=filters, **kwargs)

    options = [
        click.option(
            "--since",
            metavar="DURATION",
            default=default_since,
            show_default=default_since is not None,
            help="Only releases started this recently: 90s, 20m, 1h, 7d.",
        ),
        click.option("--target", "target_name", help="Only releases to this target."),
        click.option(
            "--plugin",
            "plugin_ref",
            metavar="ID[@VERSION]",
            help="Only releases by this plugin (every version), or by this exact version.",
        ),
        click.option("--customer", help="Only releases whose context names this customer."),
    ]
    for option in reversed(options):
        run = option(run)
    return run


STATUSES = ("claimed", "running", "succeeded", "failed", "timed_out", "unknown", "reconciled")
"""The values of :class:`turnout.releases.Status` (named here: the CLI imports it lazily)."""


@cli.group(invoke_without_command=True)
@_filter_options()
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(STATUSES),
    help="Only releases in this state (repeatable).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="How many, newest first.",
)
@json_option
@click.pass_context
def releases(
    ctx: click.Context,
    filters: dict[str, Any],
    statuses: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """List recorded releases, newest first (see also: releases show ID, stats).

    \b
    Examples:
      turnout releases --since 1h --status failed
      turnout releases --plugin directory@1.1.0 --customer acme --json
    """
    if ctx.invoked_subcommand is not None:
        return
    from turnout.releases import Status

    handle = _handle(ctx)
    handle.registry.ensure_schema()
    wanted = [Status(s) for s in statuses] or None
    records = handle.ledger.recent(statuses=wanted, limit=limit, **filters)
    if as_json:
        _print_json([r.to_dict() for r in records])
        return
    if not records:
        _say("no releases recorded" + _filters_text(filters, statuses))
        return
    _print_table(
        "releases",
        ["release", "target", "plugin", "customer", "key", "status", "attempts", "took", "started"],
        [
            (
                r.id,
                r.target,
                r.plugin_ref,
                r.context.get("customer", ""),
                r.idempotency_key,
                r.status.value,
                r.attempts,
                views.seconds_text(r.duration),
                r.started_at.isoformat(timespec="seconds"),
            )
            for r in records
        ],
    )


def _filters_text(filters: dict[str, Any], statuses: Sequence[str] = ()) -> str:
    said = [f"{name} {value}" for name, value in filters.items() if value and name != "since"]
    if filters.get("since"):
        said.append(f"since {filters['since'].isoformat(timespec='seconds')}")
    if statuses:
        said.append(f"status {'/'.join(statuses)}")
    return f" ({', '.join(said)})" if said else ""


@releases.command("show")
@click.argument("release_id")
@json_option
@click.pass_context
def releases_show(ctx: click.Context, release_id: str, as_json: bool) -> None:
    """Show one release: the request, the routing decision, the outcome, every attempt with
    its error, the timings and the tail of what the plugin printed."""
    handle = _handle(ctx)
    handle.registry.ensure_schema()
    record = handle.ledger.get(release_id)
    if record is None:
        _say(f"error: no release {release_id!r}; list them with: turnout releases")
        ctx.exit(EXIT_USAGE)
    assert record is not None  # noqa: S101 - ctx.exit does not return
    _print_release(record, as_json)


# stats ---------------------------------------------------------------------------------------


@cli.command("stats")
@click.option(
    "--by",
    "by",
    multiple=True,
    metavar="DIMENSION",
    help="Group by version (plugin@version), plugin, target, customer, plan, project or "
    "channel; repeat it (or use commas) for several. Default: version.",
)
@_filter_options(default_since="1h")
@json_option
@click.pass_context
def stats_command(
    ctx: click.Context, by: tuple[str, ...], filters: dict[str, Any], as_json: bool
) -> None:
    """Releases, failures, error rate, p50/p95/p99 duration and mean attempts per group.

    The error rate is failed (or timed out) releases over those that ended; releases still
    running or left unknown are counted apart. Groups with the highest error rate come first.

    \b
    Examples:
      turnout stats                                  error rate per version, last hour
      turnout stats --by version --customer acme     per version, for customer acme
      turnout stats --by version --by plan --since 1d
    """
    from turnout import stats

    try:
        dimensions = stats.dimensions(by)
        handle = _handle(ctx)
        handle.registry.ensure_schema()
        groups, total = stats.summarize(handle.ledger.outcomes(dimensions, **filters), dimensions)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if as_json:
        _print_json(views.stats(dimensions, groups, total))
        return
    if not groups:
        _say("no releases recorded" + _filters_text(filters))
        return

    def row(group: stats.GroupStats, names: Sequence[str | None]) -> list[Any]:
        data = group.to_dict()
        return [
            *names,
            data["releases"],
            data["succeeded"],
            data["failed"],
            data["unknown"] + data["running"],
            views.rate_text(data["error_rate"]),
            views.seconds_text(data["p50"]),
            views.seconds_text(data["p95"]),
            views.seconds_text(data["p99"]),
            "" if data["mean_attempts"] is None else f"{data['mean_attempts']:.2f}",
        ]

    rows = [row(g, [value or "-" for value in g.group.values()]) for g in groups]
    if len(groups) > 1:
        rows.append(row(total, ["(all)", *[""] * (len(dimensions) - 1)]))
    _print_table(
        "releases" + _filters_text(filters),
        [
            *dimensions,
            "releases",
            "ok",
            "failed",
            "open",
            "error rate",
            "p50",
            "p95",
            "p99",
            "attempts",
        ],
        rows,
    )


# reconcile and replay ------------------------------------------------------------------------


def _outcome_row(record: ReleaseRecord | None, error: Exception | None) -> tuple[str, str, str]:
    if record is not None:
        verdict = "ran nothing (key already released)" if record.reused else record.status.value
        return record.id, record.status.value, verdict if error is None else str(error)
    return "", "error", str(error)


@cli.command("reconcile")
@click.argument("release_id", required=False)
@click.option(
    "--as",
    "verdict",
    type=click.Choice(["succeeded", "failed"]),
    help="With RELEASE_ID: a human's verdict on an unknown release (did it deploy?).",
)
@click.option("--target", "target_name", help="Only releases to this target.")
@click.option("--reason", default="", help="Why (kept with a verdict).")
@actor_option
@json_option
@click.pass_context
def reconcile_command(
    ctx: click.Context,
    release_id: str | None,
    verdict: str | None,
    target_name: str | None,
    reason: str,
    actor: str | None,
    as_json: bool,
) -> None:
    """Settle releases whose runner died mid-call, with the plugin's probe where it has one.

    Without RELEASE_ID: every release whose lease expired while running, and every unknown
    one, is taken over with its own key: the plugin's turnout_probe says whether it deployed;
    without a probe an idempotent target is called again with the same key; otherwise it stays
    unknown. With RELEASE_ID --as succeeded|failed: record what a human found. Exits 75 while
    any release stays unknown.

    \b
    Examples:
      turnout reconcile                              every expired or unknown release
      turnout reconcile RELEASE_ID --as succeeded --reason "checked the web host"
    """
    handle = _handle(ctx)
    if release_id is not None:
        if verdict is None:
            raise UsageError("with a RELEASE_ID, say what happened: --as succeeded or --as failed")
        if target_name is not None:
            raise UsageError("--target narrows a reconcile of every release; not with a RELEASE_ID")
        record = handle.settle(release_id, verdict, actor=actor, reason=reason)
        if as_json:
            _print_json(record.to_dict())
        else:
            _say(f"release {record.id} is now {record.status.value}")
        return
    if verdict is not None:
        raise UsageError("--as needs a RELEASE_ID")
    handle.registry.ensure_schema()
    with _finish_on_sigterm() as between:
        results = handle.reconcile(target=target_name, progress=lambda _done: between())
    if as_json:
        _print_json([r.to_dict() for r in results])
    elif not results:
        _say("nothing to reconcile: no release has an expired lease or is unknown")
    else:
        _print_table(
            "reconciled",
            ["release", "target", "was", "now", "note"],
            [
                (
                    r.original.id,
                    r.original.target,
                    r.original.status.value,
                    *_outcome_row(r.record, r.error)[1:],
                )
                for r in results
            ],
        )
    if any(r.record is None or r.record.status.value == "unknown" for r in results):
        ctx.exit(EXIT_TEMPFAIL)


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to listen on (0: any free one; the address is printed).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the write token from this file (else from TURNOUT_SERVE_TOKEN).",
)
@click.pass_context
def serve_command(ctx: click.Context, host: str, port: int, token_file: Path | None) -> None:
    """Serve the dashboard and its JSON API (/api/) on HOST:PORT, loopback by default.

    Read-only unless a token is given, in TURNOUT_SERVE_TOKEN or --token-file (at least 16
    characters): then re-pointing a target, adding or removing a route and rolling back are
    allowed to whoever signs in with it (pages) or sends it as "Authorization: Bearer TOKEN"
    (API). Changes go through the same checks and history as the CLI's.

    \b
    Examples:
      turnout serve                                  read-only, http://127.0.0.1:8000
      TURNOUT_SERVE_TOKEN=$(cat token) turnout serve --port 9000
    """
    import os

    token = token_file.read_text().strip() if token_file else os.environ.get("TURNOUT_SERVE_TOKEN")
    try:
        import uvicorn

        from turnout.web import create_app
    except ImportError:
        raise UsageError(
            "turnout serve needs the web extra; run: pip install 'turnout[web]'"
        ) from None
    handle = _handle(ctx)
    handle.registry.ensure_schema()
    hosts = sorted({host, "localhost", "127.0.0.1", "[::1]"} if _loopback(host) else {"*"})
    app = create_app(handle, token=token or None, allowed_hosts=hosts)
    if token and not _loopback(host):
        _say(
            f"warning: changes are allowed and {host} is not loopback; the token crosses the "
            "network in clear unless a TLS proxy is in front",
            style="yellow",
        )
    listener = _listen(host, port)
    port = listener.getsockname()[1]  # the one chosen, for --port 0
    mode = "changes allowed with the token" if token else "read-only"
    _say(f"turnout dashboard on http://{_url_host(host)}:{port}/ ({mode}); Ctrl-C stops it")
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[listener])


def _listen(host: str, port: int) -> Any:
    """A socket listening on host:port, or a usage error that says what to change."""
    import socket

    listener = None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(2048)  # connections queue from now on, before the app has started
    except OSError as exc:
        if listener is not None:
            listener.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
            "choose another --port or --host"
        ) from None
    return listener


def _loopback(host: str) -> bool:
    return host in ("127.0.0.1", "::1", "localhost") or host.startswith("127.")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@cli.command("replay")
@click.option(
    "--since", "since", required=True, metavar="DURATION", help="The window: 20m, 1h, 90s, 2d."
)
@click.option("--target", "target_name", help="Only releases to this target.")
@click.option(
    "--status",
    "statuses",
    default="failed,timed_out,unknown",
    show_default=True,
    help="Statuses to replay, comma-separated; 'all' includes succeeded ones.",
)
@click.option("--customer", help="Only releases whose context has this customer.")
@click.option(
    "--dry-run", is_flag=True, help="Show what would be replayed, with which version; run nothing."
)
@json_option
@click.pass_context
def replay_command(
    ctx: click.Context,
    since: str,
    target_name: str | None,
    statuses: str,
    customer: str | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Release the last minutes' releases again, under the mapping in force now.

    Each replay is a new release linked to its original, with a key derived from the original
    and the target's revision: replaying the same window twice runs each release once. Exits 1
    if a replay failed permanently, else 78 if one was refused for its configuration (its
    target removed, its version not installed), else 75 if one failed transiently or is in
    progress elsewhere, else 0.

    \b
    Examples:
      turnout replay --since 20m --dry-run          what would run, with which version
      turnout replay --since 2h --target docs --status failed
    """
    from turnout.releases import Status

    if statuses == "all":
        chosen = tuple(Status)
    else:
        try:
            chosen = tuple(Status(s.strip()) for s in statuses.split(",") if s.strip())
        except ValueError as exc:
            raise UsageError(
                f"--status: {exc}; use {', '.join(s.value for s in Status)} or all"
            ) from None
    handle = _handle(ctx)
    originals = handle.replay_candidates(
        since=views.duration(since), target=target_name, statuses=chosen, customer=customer
    )
    if not originals:
        _say("nothing to replay in that window")
        if as_json:
            _print_json([])
        return
    with (
        _finish_on_sigterm() as between,
        _progress(len(originals), "replaying" if not dry_run else "planning") as advance,
    ):

        def step(_item: object) -> None:
            advance()
            between()  # after SIGTERM, no other release starts

        replays = handle.replay(originals, dry_run=dry_run, progress=step)
    rows = [
        {
            "original": r.original.id,
            "target": r.original.target,
            "was": f"{r.original.plugin_ref} {r.original.status.value}",
            "key": r.key,
            "plugin": r.plugin_ref,
            "release": r.record.id if r.record else None,
            "status": None if dry_run else (r.record.status.value if r.record else "error"),
            "reused": bool(r.record and r.record.reused),
            "error": str(r.error) if r.error else None,
        }
        for r in replays
    ]
    if as_json:
        _print_json(rows)
    else:
        _print_table(
            "replay (dry run)" if dry_run else "replay",
            ["original", "target", "was", "now with", "release", "status"],
            [
                (
                    r["original"],
                    r["target"],
                    r["was"],
                    r["plugin"] or "",
                    r["release"] or "",
                    _replay_note(r, dry_run),
                )
                for r in rows
            ],
        )
    codes = {r.record.exit_code if r.record else getattr(r.error, "exit_code", 1) for r in replays}
    if not dry_run and codes - {EXIT_OK}:
        # What asking again cannot fix comes first: a job runner retries only on 75.
        ctx.exit(next((c for c in REPLAY_EXIT_ORDER if c in codes), EXIT_TEMPFAIL))


REPLAY_EXIT_ORDER = (EXIT_FAILED, EXIT_CONFIG, EXIT_DATAERR, EXIT_USAGE)
"""Which code a replay exits with when its releases ended differently: the first of these
found, else 75."""


def _replay_note(row: dict[str, Any], dry_run: bool) -> str:
    if dry_run:
        return "would run"
    note = "ran nothing (done before)" if row["reused"] else str(row["status"])
    return f"{note}: {row['error']}" if row["error"] else note


@contextlib.contextmanager
def _progress(total: int, label: str) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr when it is a terminal; a count line at the end otherwise."""
    if not sys.stderr.isatty():
        done = 0

        def count() -> None:
            nonlocal done
            done += 1

        yield count
        _say(f"{label}: {done}/{total}")
        return
    from rich.progress import Progress

    with Progress(console=_stderr_console(), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> Callable[..., Any] | None:
    """Entry point of the ``turnout`` script."""
    return cli.main(args=argv, prog_name="turnout")
