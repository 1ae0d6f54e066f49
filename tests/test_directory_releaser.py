"""The directory releaser driven through turnout, on real folders and archives."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from turnout import ConfigRejectedError, ReleaseFailedError, Status, Turnout
from turnout.errors import RelativeArtifactError
from turnout.refs import PluginRef
from turnout.releases import fingerprint

pytestmark = pytest.mark.usefixtures("plugin_site")


@pytest.fixture
def tt(db_path: Path, tmp_path: Path) -> Turnout:
    handle = Turnout(str(db_path))
    handle.set_target("web", "directory@1.0.0", config={"root": str(tmp_path / "www"), "keep": 2})
    yield handle
    handle.close()


def _config(tt: Turnout) -> dict[str, object]:
    return tt.registry.get_target("web").config


def _site(tmp_path: Path, name: str, body: str) -> Path:
    site = tmp_path / name
    site.mkdir()
    (site / "index.html").write_text(body)
    return site


def test_directory_release_switches_current_and_is_idempotent(tt: Turnout, tmp_path: Path) -> None:
    www = tmp_path / "www"
    first = tt.release("web", str(_site(tmp_path, "v1", "one")), key="build-1")
    assert first.status is Status.SUCCEEDED
    assert (www / "current" / "index.html").read_text() == "one"
    again = tt.release("web", str(tmp_path / "v1"), key="build-1")
    assert again.reused
    assert again.result == first.result
    second = tt.release("web", str(_site(tmp_path, "v2", "two")), key="build-2")
    assert (www / "current" / "index.html").read_text() == "two"
    assert second.result is not None
    assert (www / "current").resolve() == Path(second.result["path"])
    releases = [p for p in (www / "releases").iterdir() if not p.name.startswith(".")]
    assert len(releases) == 2


def test_directory_two_customers_with_one_key_each_get_their_deploy(
    tt: Turnout, tmp_path: Path
) -> None:
    # S7 end to end: the plugin keeps a journal per (target, key). Were it called with the
    # bare key, the second customer's release would get the first's journal entry back: a
    # success recorded for an artifact that never went live.
    www = tmp_path / "www"
    first = tt.release(
        "web", str(_site(tmp_path, "c1", "one")), key="k1", context={"customer": "c1"}
    )
    second = tt.release(
        "web", str(_site(tmp_path, "c3", "three")), key="k1", context={"customer": "c3"}
    )
    assert second.status is Status.SUCCEEDED
    assert second.result is not None
    assert not second.result["reused"]
    assert (www / "current" / "index.html").read_text() == "three"
    assert first.result is not None
    assert second.result["path"] != first.result["path"]


def test_directory_release_refuses_an_escaping_archive(tt: Turnout, tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"owned"
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ReleaseFailedError) as raised:
        tt.release("web", str(archive), key="evil-1")
    record = raised.value.release
    assert record.attempts == 1
    assert record.retryable is False
    assert "../../escaped.txt" in (record.error or "")
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "www" / "current").exists()


def test_directory_target_config_is_validated(tt: Turnout) -> None:
    with pytest.raises(ConfigRejectedError) as raised:
        tt.set_target("web", "directory@1.0.0", config={"root": "relative/path"})
    assert "root" in str(raised.value)
    assert tt.registry.get_target("web").config["keep"] == 2


def test_directory_relative_artifact_is_the_callers_path(
    tt: Turnout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker runs in a private folder; a relative artifact still means the caller's, and
    is recorded so: a replay run from another folder deploys that file, not one of the same
    name there."""
    _site(tmp_path, "v1", "relative")
    monkeypatch.chdir(tmp_path)
    record = tt.release("web", "v1", key="rel-1")
    assert record.artifact == str(tmp_path / "v1")
    assert tt.release("web", "v1", key="rel-1").reused  # the same request, asked again
    assert (tmp_path / "www" / "current" / "index.html").read_text() == "relative"

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _site(elsewhere, "v1", "another file of the same name")
    _site(tmp_path, "v2", "two")
    tt.release("web", str(tmp_path / "v2"), key="rel-2")
    monkeypatch.chdir(elsewhere)
    (replay,) = tt.replay([record])
    assert replay.record is not None
    assert replay.record.status is Status.SUCCEEDED
    assert replay.record.artifact == str(tmp_path / "v1")
    assert (tmp_path / "www" / "current" / "index.html").read_text() == "relative"


def test_directory_release_recorded_with_a_relative_path_goes_on_as_recorded(
    tt: Turnout, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release claimed before paths were recorded absolute holds the path as written: asked
    again with it, it is the same request (not a mismatch); replayed, it is refused, since from
    the replay's folder the name could be another file."""
    _site(tmp_path, "v1", "one")
    monkeypatch.chdir(tmp_path)
    first = tt.release("web", "v1", key="old-1")
    with tt.registry.engine.begin() as conn:  # as such a release was recorded
        conn.execute(
            sa.text("UPDATE releases SET artifact = 'v1', fingerprint = :f WHERE id = :id"),
            {
                "f": fingerprint("web", "v1", PluginRef("directory", "1.0.0"), _config(tt), {}),
                "id": first.id,
            },
        )
    again = tt.release("web", "v1", key="old-1")
    assert (again.id, again.reused, again.artifact) == (first.id, True, "v1")
    (refused,) = tt.replay([again])
    assert isinstance(refused.error, RelativeArtifactError)
    assert refused.error.exit_code == 78
    assert "relative path 'v1'" in str(refused.error)
    assert refused.record is None
