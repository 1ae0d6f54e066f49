"""Seeing every version: `releases` filters, `releases show`, `stats` per version/customer/plan.

Real releases (echo and plain fixture plugins, inline) on SQLite and PostgreSQL; durations
checked exactly through a ledger with an injected clock; percentiles against the standard
library's ``statistics.quantiles``.
"""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from turnout import Turnout
from turnout.cli import STATUSES, cli
from turnout.errors import ReleaseFailedError
from turnout.refs import PluginRef
from turnout.releases import Claim, Ledger, Status
from turnout.stats import percentile, summarize

pytestmark = pytest.mark.usefixtures("plugin_site")

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ECHO = PluginRef("echo", "1.0.0")


def new_claim(ledger: Ledger, key: str, context: dict[str, str] | None = None) -> Claim:
    """A new release to target "site" by echo@1.0.0, claimed (running) under ``ledger``."""
    claim = ledger.claim(
        target="site", key=key, fingerprint=key, plugin_ref=ECHO, artifact="a",
        context=context or {},
    )  # fmt: skip
    assert isinstance(claim, Claim)
    return claim


def invoke(url: str, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)


def data(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# Real releases through two targets, three customers, two plugins -------------------------


def release_world(url: str, tmp_path: Path) -> dict[str, list[str]]:
    """checkout: echo@1.0.0, customer globex routed to plain@0.1.0; flaky: echo, always fails.

    acme (plan pro) releases 3x to checkout and 2x to flaky; globex (plan free) 2x to
    checkout (plain); initech (plan free) 1x to checkout.
    """
    calls = tmp_path / "calls.jsonl"
    ids: dict[str, list[str]] = {}
    with Turnout(url, sleep=lambda _s: None) as tt:
        tt.set_target("checkout", "echo@1.0.0", config={"calls": str(calls)}, isolation="inline")
        tt.add_route("checkout", "customer", ["globex"], "plain@0.1.0")
        tt.set_target(
            "flaky",
            "echo@1.0.0",
            config={"calls": str(calls), "fail_with": "permanent"},
            isolation="inline",
        )
        plan = {"acme": "pro", "globex": "free", "initech": "free"}
        for target, customer, count in [
            ("checkout", "acme", 3),
            ("checkout", "globex", 2),
            ("checkout", "initech", 1),
            ("flaky", "acme", 2),
        ]:
            for i in range(count):
                context = {"customer": customer, "plan": plan[customer]}
                try:
                    record = tt.release(
                        target, "dist/a.tgz", key=f"{customer}-{i}", context=context
                    )
                except ReleaseFailedError as failed:
                    record = failed.release
                ids.setdefault(f"{target}/{customer}", []).append(record.id)
    return ids


def by_group(payload: dict[str, Any], *names: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(g[name] for name in names): g for g in payload["groups"]}


def test_stats_per_version_target_customer_and_plan_on_real_releases(
    registry_url: str, tmp_path: Path
) -> None:
    release_world(registry_url, tmp_path)

    per_version = by_group(data(invoke(registry_url, "stats", "--json")), "version")
    echo, plain = per_version[("echo@1.0.0",)], per_version[("plain@0.1.0",)]
    assert (echo["releases"], echo["succeeded"], echo["failed"]) == (6, 4, 2)
    assert echo["error_rate"] == pytest.approx(2 / 6)
    assert (plain["releases"], plain["succeeded"], plain["failed"]) == (2, 2, 0)
    assert plain["error_rate"] == 0
    assert echo["mean_attempts"] == 1
    assert 0 <= echo["p50"] <= echo["p95"] <= echo["p99"]

    # "per version for customer acme" is one command.
    acme = data(invoke(registry_url, "stats", "--by", "version", "--customer", "acme", "--json"))
    assert [(g["version"], g["releases"], g["failed"]) for g in acme["groups"]] == [
        ("echo@1.0.0", 5, 2)
    ]
    assert acme["total"]["releases"] == 5

    both = by_group(
        data(invoke(registry_url, "stats", "--by", "version,customer", "--json")),
        "version",
        "customer",
    )
    assert set(both) == {
        ("echo@1.0.0", "acme"),
        ("echo@1.0.0", "initech"),
        ("plain@0.1.0", "globex"),
    }
    assert both[("echo@1.0.0", "acme")]["error_rate"] == pytest.approx(2 / 5)

    per_plan = by_group(data(invoke(registry_url, "stats", "--by", "plan", "--json")), "plan")
    assert per_plan[("pro",)]["releases"] == 5
    assert per_plan[("free",)]["failed"] == 0
    per_target = data(invoke(registry_url, "stats", "--by", "target", "--json"))
    # The worst group comes first.
    assert [g["target"] for g in per_target["groups"]] == ["flaky", "checkout"]

    only_plain = data(invoke(registry_url, "stats", "--plugin", "plain", "--json"))
    assert only_plain["total"]["releases"] == 2
    table = invoke(registry_url, "stats", "--by", "version")
    assert table.exit_code == 0
    assert "echo@1.0.0" in table.stdout
    assert "33.3%" in table.stdout
    assert "(all)" in table.stdout


def test_releases_list_filters(registry_url: str, tmp_path: Path) -> None:
    ids = release_world(registry_url, tmp_path)

    def listed(*args: str) -> list[str]:
        return [r["id"] for r in data(invoke(registry_url, "releases", "--json", *args))]

    assert set(listed("--customer", "acme")) == set(ids["checkout/acme"] + ids["flaky/acme"])
    assert set(listed("--status", "failed")) == set(ids["flaky/acme"])
    assert set(listed("--plugin", "plain@0.1.0")) == set(ids["checkout/globex"])
    assert set(listed("--plugin", "echo", "--target", "checkout")) == set(
        ids["checkout/acme"] + ids["checkout/initech"]
    )
    assert set(listed("--status", "failed", "--status", "succeeded", "--limit", "100")) == {
        i for group in ids.values() for i in group
    }
    assert listed("--since", "1h", "--limit", "3") == listed("--limit", "3")
    assert len(listed("--limit", "3")) == 3
    nothing = invoke(registry_url, "releases", "--customer", "nobody", "--status", "failed")
    assert nothing.exit_code == 0
    assert "no releases recorded (customer nobody, status failed)" in nothing.stderr
    table = invoke(registry_url, "releases", "--target", "flaky")
    assert ids["flaky/acme"][0] in table.stdout
    assert "acme" in table.stdout


def test_releases_show_gives_request_decision_attempts_output_and_timings(
    db_path: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{db_path}"
    calls = tmp_path / "calls.jsonl"
    with Turnout(url, sleep=lambda _s: None) as tt:
        tt.set_target(
            "site",
            "echo@1.0.0",
            config={"calls": str(calls), "fail_with": "connection", "fail_times": 2},
            max_attempts=3,
            isolation="inline",
        )
        record = tt.release("site", "dist/a.tgz", key="k1", context={"customer": "acme"})
    assert record.status is Status.SUCCEEDED
    shown = data(invoke(url, "releases", "show", record.id, "--json"))
    log = shown["attempt_log"]
    assert [entry["attempt"] for entry in log] == [1, 2, 3]
    assert [entry["outcome"] for entry in log] == ["error", "error", "succeeded"]
    assert [entry.get("error_type") for entry in log] == [
        "ConnectionError",
        "ConnectionError",
        None,
    ]
    assert log[0]["error"] == "ConnectionError: echo failed on attempt 1 with token="
    assert all(entry["retryable"] for entry in log[:2])
    starts = [datetime.fromisoformat(entry["started_at"]) for entry in log]
    assert starts == sorted(starts)
    assert all(0 <= entry["duration"] <= shown["duration"] for entry in log)
    assert shown["decision"]["rule"] == "target default"

    text = invoke(url, "releases", "show", record.id)
    assert text.exit_code == 0
    for fragment in (
        "attempts",
        "ConnectionError: echo failed on attempt 2",
        "decision",
        "in attempts",
        "waiting",
        "echo@1.0.0: target default at revision 1",
    ):
        assert fragment in text.stdout, fragment


def test_releases_show_prints_plugin_output_escaped(db_path: Path) -> None:
    """Stored output with ANSI escapes and rich markup is printed as written, one line each."""
    url = f"sqlite:///{db_path}"
    with Turnout(url) as tt:
        claim = new_claim(tt.ledger, "k")
        tt.ledger.move(
            claim,
            Status.FAILED,
            error="boom [red]not markup[/red]",
            output="--- attempt 1 ---\nINFO fake log line\n\x1b[31mred\x1b[0m\n",
        )
    shown = invoke(url, "releases", "show", claim.id)
    assert "\x1b" not in shown.stdout
    assert "\\x1b[31mred\\x1b[0m" in shown.stdout
    assert "[red]not markup[/red]" in shown.stdout
    assert "  INFO fake log line" in shown.stdout


# Exact durations through a ledger with an injected clock ------------------------------------


def test_stats_durations_and_percentiles_are_exact(registry_url: str) -> None:
    now = [NOW]
    with Turnout(registry_url) as tt:
        ledger = Ledger(tt.registry.engine, clock=lambda: now[0])
        durations = [0.010 * (i + 1) for i in range(40)]  # 10 ms .. 400 ms
        for i, seconds in enumerate(durations):
            now[0] = NOW + timedelta(minutes=i)
            claim = new_claim(ledger, f"k{i}", {"customer": "acme"})
            now[0] += timedelta(seconds=seconds)
            status = Status.FAILED if i % 4 == 0 else Status.SUCCEEDED
            ledger.move(claim, status, attempts=1 + i % 3)
        # One still running and one unknown: counted apart, in no rate and no percentile.
        new_claim(ledger, "open")
        lost = new_claim(ledger, "lost")  # taken over after its runner died; nothing could tell
        ledger.move(lost, Status.CLAIMED)
        ledger.move(lost, Status.UNKNOWN, error="runner died")
        groups, total = summarize(ledger.outcomes(["version"]), ["version"])
    (echo,) = groups
    assert (echo.releases, echo.succeeded, echo.failed, echo.unknown, echo.running) == (
        42, 30, 10, 1, 1,
    )  # fmt: skip
    assert echo.error_rate == pytest.approx(10 / 40)
    assert echo.mean_attempts == pytest.approx((sum(1 + i % 3 for i in range(40)) + 2) / 42)
    expected = statistics.quantiles(durations, n=100, method="inclusive")
    for q in (50, 95, 99):
        assert echo.percentile(q) == pytest.approx(expected[q - 1], abs=1e-6)
    assert total.releases == 42


def test_durations_and_slices_are_exact_across_a_second_boundary(registry_url: str) -> None:
    """A release that starts in the last half millisecond of a second and ends in the next:
    SQLite rounds such a timestamp up to the next second when it reads it whole."""
    start = NOW + timedelta(seconds=0.9997)
    now = [start]
    with Turnout(registry_url) as tt:
        ledger = Ledger(tt.registry.engine, clock=lambda: now[0])
        claim = new_claim(ledger, "edge")
        now[0] = start + timedelta(seconds=0.0006)
        ledger.move(claim, Status.SUCCEEDED)
        ((*_, seconds),) = list(ledger.outcomes(["version"]))
        (point,) = ledger.timeline(since=NOW, until=NOW + timedelta(seconds=2), buckets=2)
    assert float(seconds) == pytest.approx(0.0006, abs=1e-6)
    assert point.mean_seconds == pytest.approx(0.0006, abs=1e-6)
    assert point.bucket == 0  # started at second 0.9997 of the window, not at 1


def test_stats_since_window_and_bad_dimension(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    now = [datetime.now(UTC) - timedelta(hours=3)]
    with Turnout(url) as tt:
        tt.registry.ensure_schema()
        ledger = Ledger(tt.registry.engine, clock=lambda: now[0])
        for i, age in enumerate((3, 0)):
            now[0] = datetime.now(UTC) - timedelta(hours=age)
            ledger.move(new_claim(ledger, f"k{i}"), Status.SUCCEEDED)
    assert data(invoke(url, "stats", "--json"))["total"]["releases"] == 1  # default: 1h
    assert data(invoke(url, "stats", "--since", "4h", "--json"))["total"]["releases"] == 2
    bad = invoke(url, "stats", "--by", "colour")
    assert bad.exit_code == 2
    assert "cannot group by colour" in bad.stderr
    empty = invoke(url, "stats", "--target", "nowhere")
    assert empty.exit_code == 0
    assert "no releases recorded (target nowhere" in empty.stderr


def test_stats_pure_grouping_and_percentile_edges() -> None:
    assert percentile([], 50) is None
    assert percentile([2.0], 99) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    # (plan, status, attempts, seconds), as Ledger.outcomes(["plan"]) yields them
    rows = [("pro" if i % 2 else None, "succeeded", 1, float(i)) for i in range(4)]
    rows.append(("pro", "running", 1, None))
    groups, total = summarize(rows, ["plan"])
    assert {g.group["plan"]: g.releases for g in groups} == {"pro": 3, None: 2}
    assert total.percentile(50) == 1.5  # the running one has no duration yet
    with pytest.raises(ValueError, match="cannot group by nope"):
        summarize(rows, ["nope"])


def test_cli_status_names_are_the_ledgers() -> None:
    assert tuple(s.value for s in Status) == STATUSES
