"""`turnout serve`: the API returns the CLI's JSON, the pages show real releases, and writes
need the token (API) or a signed-in session with its CSRF token from the same origin (pages).

Real releases (fixture plugins, inline) on real registries; the app runs in process through
FastAPI's TestClient. The browser tests (test_browser.py) drive the served app in Chromium.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from test_stats import release_world

from turnout import Turnout
from turnout.cli import cli
from turnout.errors import ReleaseFailedError, UsageError
from turnout.refs import PluginRef
from turnout.web import create_app

pytestmark = pytest.mark.usefixtures("plugin_site")

TOKEN = "s3cret-token-for-tests"
RELEASE_LINK = re.compile(r'href="/releases/([0-9a-f]+)"')


class World:
    """A registry with real releases (see ``release_world``) and a handle on it."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.ids = release_world(url, tmp_path)
        self.handle = Turnout(url)

    def client(self, token: str | None = None, **options: Any) -> TestClient:
        return TestClient(create_app(self.handle, token=token, **options))

    def cli_json(self, *args: str) -> Any:
        result = CliRunner().invoke(cli, ["--db", self.url, *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def revision(self, target: str = "checkout") -> int:
        return self.handle.registry.get_target(target).revision


@pytest.fixture
def world(registry_url: str, tmp_path: Path) -> Iterator[World]:
    made = World(registry_url, tmp_path)
    yield made
    made.handle.close()


@pytest.fixture
def sqlite_world(db_path: Path, tmp_path: Path) -> Iterator[World]:
    made = World(f"sqlite:///{db_path}", tmp_path)
    yield made
    made.handle.close()


def signed_in(world: World) -> tuple[TestClient, str]:
    """A client signed in with the token, and the CSRF token its pages carry."""
    client = world.client(TOKEN)
    response = client.post("/login", data={"token": TOKEN, "next": "/targets/checkout"})
    assert response.status_code == 200  # followed the 303 to the target page
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', response.text)
    assert match, "a signed-in page carries the CSRF token"
    return client, match.group(1)


# The API is the CLI's --json ---------------------------------------------------------------


def test_api_returns_what_the_cli_prints_with_json(world: World) -> None:
    client = world.client()
    failed = world.ids["flaky/acme"][0]
    pairs = [
        ("/api/targets", ["target", "list"]),
        ("/api/targets/checkout", ["target", "show", "checkout"]),
        ("/api/targets/checkout/routes", ["route", "list", "checkout"]),
        ("/api/targets/checkout/history", ["history", "checkout"]),
        (
            "/api/releases?plugin=echo@1.0.0&customer=acme&limit=100",
            ["releases", "--plugin", "echo@1.0.0", "--customer", "acme", "--limit", "100"],
        ),
        (
            "/api/releases?status=failed&status=succeeded",
            ["releases", "--status", "failed", "--status", "succeeded"],
        ),
        (f"/api/releases/{failed}", ["releases", "show", failed]),
        ("/api/stats?by=version,customer", ["stats", "--by", "version,customer"]),
        ("/api/stats?by=plan&target=checkout", ["stats", "--by", "plan", "--target", "checkout"]),
    ]
    for path, args in pairs:
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert response.json() == world.cli_json(*args), path
    # Non-trivial answers: the comparison above compared something.
    assert len(client.get("/api/releases?plugin=echo@1.0.0&customer=acme").json()) == 5
    assert client.get(f"/api/releases/{failed}").json()["status"] == "failed"


def test_api_overview_counts_each_version_of_each_target(world: World) -> None:
    data = world.client().get("/api/overview?since=1h").json()
    versions = {
        (card["name"], line["plugin"]): line
        for card in data["targets"]
        for line in card["versions"]
    }
    echo, plain = versions[("checkout", "echo@1.0.0")], versions[("checkout", "plain@0.1.0")]
    assert (echo["releases"], echo["failed"], echo["error_rate"]) == (4, 0, 0)
    assert (plain["releases"], plain["failed"], plain["live"]) == (2, 0, True)
    assert plain["share"] == "customer=globex"
    flaky = versions[("flaky", "echo@1.0.0")]
    assert (flaky["releases"], flaky["failed"], flaky["error_rate"]) == (2, 2, 1.0)
    # All of them started a moment ago: in the newest slice.
    assert flaky["error_rate_by_bucket"][-1] == 1.0
    assert set(flaky["error_rate_by_bucket"][:-1]) == {None}
    # The mean over the window is the mean of the releases' own durations, whatever slices
    # they fell in.
    ran = world.handle.ledger.recent(target="checkout", plugin=PluginRef("echo", "1.0.0"))
    expected = statistics.fmean(r.duration for r in ran if r.duration is not None)
    assert echo["mean_duration"] == pytest.approx(expected, abs=1e-5)


def test_bad_filters_are_refused_with_the_fix(sqlite_world: World) -> None:
    client = sqlite_world.client()
    status = client.get("/api/releases?status=lost")
    assert status.status_code == 400
    assert "unknown status 'lost'" in status.json()["error"]
    by = client.get("/api/stats?by=colour")
    assert by.status_code == 400
    assert "cannot group by colour" in by.json()["error"]
    since = client.get("/?since=soon")
    assert since.status_code == 400
    assert "expects a duration such as 20m" in since.text
    missing = client.get("/api/targets/nowhere")
    assert missing.status_code == 404
    assert missing.json()["type"] == "UnknownTargetError"


# Pages ---------------------------------------------------------------------------------------


def test_pages_show_targets_versions_and_releases(sqlite_world: World) -> None:
    client = sqlite_world.client()
    overview = client.get("/")
    assert overview.status_code == 200
    for text in ('data-target="checkout"', 'data-target="flaky"', 'data-version="plain@0.1.0"'):
        assert text in overview.text
    assert overview.text.count('<svg class="chart errors"') == 3  # one per version line
    assert "100.0%" in overview.text  # flaky's error rate
    assert 'hx-trigger="every 10s"' in overview.text  # it refreshes on its own

    target = client.get("/targets/checkout")
    assert target.status_code == 200
    assert target.text.count("<tr data-revision=") == 2
    assert "customer=globex -&gt; plain@0.1.0" in target.text
    assert 'data-by="customer"' in target.text
    assert "<form" not in target.text.split("<main>")[1]  # read-only: no write forms

    plain = client.get("/releases?plugin=plain@0.1.0")
    assert set(RELEASE_LINK.findall(plain.text)) == set(sqlite_world.ids["checkout/globex"])
    failed = client.get("/releases?target=flaky&status=failed")
    assert set(RELEASE_LINK.findall(failed.text)) == set(sqlite_world.ids["flaky/acme"])

    release = client.get(f"/releases/{sqlite_world.ids['flaky/acme'][0]}")
    assert release.status_code == 200
    assert "RuntimeError" in release.text
    assert "(RuntimeError, permanent)" in release.text
    assert "default at revision 1" in release.text  # the decision record, in words


def test_plugin_text_is_escaped_on_every_page(sqlite_world: World, tmp_path: Path) -> None:
    markup = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    handle = sqlite_world.handle
    handle.set_target(
        "markup",
        "echo@1.0.0",
        config={"token": markup, "fail_with": "permanent"},
        isolation="inline",
    )
    with pytest.raises(ReleaseFailedError) as failed:
        handle.release("markup", "dist/a.tgz", key="k-1", context={"customer": markup[:20]})
    client = sqlite_world.client()
    for path in ["/", "/targets/markup", "/releases", f"/releases/{failed.value.release.id}"]:
        page = client.get(path)
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text, path
        assert "<img src=x" not in page.text, path
    release = client.get(f"/releases/{failed.value.release.id}").text
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in release
    assert "script-src 'self'" in client.get("/").headers["content-security-policy"]


def test_no_secret_value_is_rendered(sqlite_world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-7f3a9c1e5b"
    monkeypatch.setenv("TURNOUT_WEB_CANARY", canary)
    handle = sqlite_world.handle
    handle.set_target(
        "leaks", "leaky@0.1.0", config={"token": "env:TURNOUT_WEB_CANARY"}, isolation="inline"
    )
    record = handle.release("leaks", "dist/a.tgz", key="k-1")
    assert record.output  # the plugin printed the secret; it is stored redacted
    client = sqlite_world.client(TOKEN)
    paths = ["/", "/targets/leaks", "/releases", f"/releases/{record.id}", "/api/overview"]
    paths += ["/api/targets", "/api/targets/leaks/history", "/api/releases"]
    paths += [f"/api/releases/{record.id}", "/api/stats?by=version"]
    for path in paths:
        page = client.get(path)
        assert page.status_code == 200, path
        assert canary not in page.text, path
    assert "env:TURNOUT_WEB_CANARY" in client.get("/api/targets/leaks").text  # the reference


def test_only_the_hosts_served_are_answered(sqlite_world: World) -> None:
    served = sqlite_world.client(allowed_hosts=["127.0.0.1", "localhost"])
    assert served.get("/api/targets", headers={"host": "127.0.0.1"}).status_code == 200
    # A page of another site that resolves its name to loopback (DNS rebinding) reads nothing.
    assert served.get("/api/targets", headers={"host": "evil.example"}).status_code == 400


# Writes ----------------------------------------------------------------------------------------


def test_read_only_without_a_token(sqlite_world: World) -> None:
    client = sqlite_world.client()
    before = sqlite_world.revision()
    api = client.post("/api/targets/checkout/rollback", json={"reason": "try"})
    assert api.status_code == 403
    assert "TURNOUT_SERVE_TOKEN" in api.json()["error"]
    page = client.post("/targets/checkout/rollback", data={"reason": "try", "to_revision": "1"})
    assert page.status_code == 403
    assert client.get("/login").status_code == 403
    assert sqlite_world.revision() == before
    with pytest.raises(UsageError, match="at least 16"):
        create_app(sqlite_world.handle, token="short")


def test_api_writes_need_the_token_and_go_through_the_same_checks(world: World) -> None:
    client = world.client(TOKEN)
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {"plugin": "plain@0.1.0", "reason": "move everyone"}
    assert client.post("/api/targets/checkout/plugin", json=body).status_code == 401
    wrong = client.post(
        "/api/targets/checkout/plugin", json=body, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401
    assert world.revision() == 2

    missing = client.post(
        "/api/targets/checkout/plugin", json={**body, "plugin": "echo@9.9.9"}, headers=auth
    )
    assert missing.status_code == 422
    assert missing.json()["type"] == "PluginNotInstalledError"
    stale = client.post(
        "/api/targets/checkout/plugin", json={**body, "expect_revision": 1}, headers=auth
    )
    assert stale.status_code == 409
    unexplained = client.post(
        "/api/targets/checkout/plugin", json={"plugin": "plain@0.1.0"}, headers=auth
    )
    assert unexplained.status_code == 400
    assert "reason" in unexplained.json()["error"]
    dry = client.post(
        "/api/targets/checkout/plugin", json={**body, "dry_run": True}, headers=auth
    ).json()
    assert (dry["dry_run"], dry["changed"]) == (True, True)
    assert world.revision() == 2  # nothing written by the refusals or the dry run

    moved = client.post(
        "/api/targets/checkout/plugin", json={**body, "expect_revision": 2}, headers=auth
    )
    assert moved.status_code == 200
    shown = world.cli_json("target", "show", "checkout")
    assert moved.json() == {**shown, "changed": True, "dry_run": False}
    route = client.post(
        "/api/targets/checkout/routes",
        json={"selector": "plan", "values": ["pro"], "plugin": "echo@1.0.0", "reason": "pro"},
        headers=auth,
    ).json()
    new_route = next(r for r in route["routes"] if r["match"] == {"plan": ["pro"]})
    removed = client.delete(
        f"/api/targets/checkout/routes/{new_route['id']}?reason=undo", headers=auth
    ).json()
    assert all(r["id"] != new_route["id"] for r in removed["routes"])
    back = client.post(
        "/api/targets/checkout/rollback", json={"to_revision": 1, "reason": "undo"}, headers=auth
    ).json()
    assert (back["plugin"], back["routes"], back["revision"]) == ("echo@1.0.0", [], 6)

    history = world.cli_json("history", "checkout")
    assert [row["reason"] for row in history[2:]] == ["move everyone", "pro", "undo", "undo"]
    assert all(row["actor"].startswith("web:") for row in history[2:])


def test_page_writes_need_a_session_its_csrf_token_and_the_same_origin(
    sqlite_world: World,
) -> None:
    anonymous = sqlite_world.client(TOKEN)
    form = {"to_revision": "1", "reason": "bad canary", "expect_revision": "2"}
    assert anonymous.post("/targets/checkout/rollback", data=form).status_code == 401
    assert anonymous.post("/login", data={"token": "wrong"}).status_code == 401

    client, csrf = signed_in(sqlite_world)
    cookie = client.cookies.get("turnout_session")
    assert cookie
    login = sqlite_world.client(TOKEN).post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert "httponly" in login.headers["set-cookie"].lower()
    assert "samesite=strict" in login.headers["set-cookie"].lower()

    assert client.post("/targets/checkout/rollback", data=form).status_code == 403  # no CSRF
    foreign = client.post(
        "/targets/checkout/rollback",
        data={**form, "csrf": csrf},
        headers={"origin": "http://evil.example"},
    )
    assert foreign.status_code == 403
    assert sqlite_world.revision() == 2

    refused = client.post(
        "/targets/checkout/plugin",
        data={"plugin": "echo@9.9.9", "reason": "typo", "csrf": csrf, "expect_revision": "2"},
    )
    assert refused.status_code == 422
    assert "echo@9.9.9" in refused.text
    assert sqlite_world.revision() == 2

    preview = client.post(
        "/targets/checkout/rollback", data={"to_revision": "1", "dry_run": "1", "csrf": csrf}
    )
    assert preview.status_code == 200
    assert "nothing was written" in preview.text
    assert "This would write revision 3" in preview.text
    moves = re.search(r'<table class="moves">(.*?)</table>', preview.text, re.S)
    assert moves, "the preview lists who would move"
    assert "<td>plain@0.1.0</td><td>echo@1.0.0</td>" in moves.group(1)
    assert "globex" in moves.group(1)
    assert sqlite_world.revision() == 2  # a preview writes nothing

    done = client.post(
        "/targets/checkout/rollback",
        data={**form, "csrf": csrf},
        headers={"origin": str(client.base_url)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert done.headers["location"] == "/targets/checkout?done=rollback&revision=3"
    page = client.get(done.headers["location"]).text
    assert "rolled back: revision 3" in page
    spoof = client.get("/targets/checkout?done=Your+token+expired,+see+evil.example").text
    assert 'class="notice"' not in spoof  # the notice is a fixed text, for a change's name
    assert page.count("<tr data-revision=") == 3
    latest = sqlite_world.cli_json("history", "checkout")[-1]
    assert (latest["revision"], latest["reason"]) == (3, "bad canary")
    assert sqlite_world.cli_json("target", "show", "checkout")["routes"] == []

    added = client.post(
        "/targets/checkout/routes",
        data={"selector": "plan", "values": "pro, free", "plugin": "plain@0.1.0",
              "reason": "plans", "csrf": csrf},
    )  # fmt: skip
    assert added.status_code == 200  # followed to the target page
    (route,) = sqlite_world.cli_json("route", "list", "checkout")["routes"]
    assert route["match"] == {"plan": ["pro", "free"]}
    gone = client.post(
        f"/targets/checkout/routes/{route['id']}/remove", data={"reason": "undo", "csrf": csrf}
    )
    assert gone.status_code == 200
    assert sqlite_world.cli_json("route", "list", "checkout")["routes"] == []
    assert client.post("/targets/checkout/remove-route", data={"csrf": csrf}).status_code == 404

    client.post("/logout", data={"csrf": csrf})
    assert client.post("/targets/checkout/rollback", data=form).status_code == 401


def test_serve_says_what_to_change_when_it_cannot_start(db_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(cli, ["--db", str(db_path), "serve", "--port", str(port)])
    assert busy.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in busy.output
    assert "choose another --port" in busy.output
    blank = CliRunner().invoke(cli, ["--db", str(db_path.parent / "new.db"), "serve"])
    assert blank.exit_code == 78
    assert "new.db db upgrade" in blank.output  # "create it with: turnout --db ... db upgrade"
    assert not (db_path.parent / "new.db").exists()
    short = CliRunner().invoke(
        cli, ["--db", str(db_path), "serve"], env={"TURNOUT_SERVE_TOKEN": "short"}
    )
    assert short.exit_code == 2
    assert "at least 16 characters" in short.output
