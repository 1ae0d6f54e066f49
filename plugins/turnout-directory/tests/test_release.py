from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import turnout_directory
from turnout_directory import _release

SITE = {"index.html": "<h1>v1</h1>", "css/site.css": "body{}", "js/app.js": "go()"}


def rid(target: str, key: str) -> str:
    return hashlib.sha256(f"{target}\0{key}".encode()).hexdigest()[:20]


def release(artifact: Path | str, config: dict[str, Any], key: str, target: str = "prod") -> Any:
    return turnout_directory.turnout_release(
        artifact=str(artifact), target=target, config=config, idempotency_key=key
    )


def current_of(root: Path) -> str:
    return os.readlink(root / "current")


def release_folders(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "releases").iterdir() if not p.name.startswith("."))


def test_release_directory_artifact_publishes_and_switches_current(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    artifact = make_tree("build", SITE)
    os.symlink("index.html", artifact / "latest.html")

    result = release(artifact, config, "k1")

    expected_id = rid("prod", "k1")
    folder = root / "releases" / expected_id
    assert result == {
        "release_id": expected_id,
        "path": str(folder),
        "current": str(root / "current"),
        "files": 4,
        "idempotency_key": "k1",
        "reused": False,
    }
    assert current_of(root) == f"releases/{expected_id}"
    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "<h1>v1</h1>"
    assert (root / "current" / "css" / "site.css").read_text(encoding="utf-8") == "body{}"
    assert os.readlink(folder / "latest.html") == "index.html"
    marker = json.loads((folder / ".turnout-release.json").read_text(encoding="utf-8"))
    assert marker["release_id"] == expected_id
    assert marker["created"] == pytest.approx(time.time(), abs=60)
    assert [p.name for p in (root / "releases").iterdir()] == [expected_id]


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".TAR.GZ"])
def test_release_tar_artifact_unpacks_files_and_inner_symlinks(
    root: Path, config: dict[str, Any], make_tar: Any, suffix: str
) -> None:
    artifact = make_tar(
        f"site{suffix}",
        [
            ("./", "dir", ""),
            ("./index.html", "file", "<h1>tar</h1>"),
            ("./docs/", "dir", ""),
            ("./docs/guide.html", "file", "guide"),
            ("./docs/home.html", "symlink", "../index.html"),
            ("./copy.html", "hardlink", "./index.html"),
        ],
    )

    result = release(artifact, config, "tar-1")

    folder = Path(result["path"])
    assert result["files"] == 4
    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "<h1>tar</h1>"
    assert (root / "current" / "docs" / "home.html").read_text(encoding="utf-8") == "<h1>tar</h1>"
    assert os.readlink(folder / "docs" / "home.html") == "../index.html"
    assert (folder / "copy.html").read_text(encoding="utf-8") == "<h1>tar</h1>"
    assert current_of(root) == f"releases/{rid('prod', 'tar-1')}"


def test_release_zip_artifact_keeps_symlinks_and_exec_bits(
    root: Path, config: dict[str, Any], make_zip: Any
) -> None:
    artifact = make_zip(
        "site.zip",
        [
            ("index.html", "file", "<h1>zip</h1>"),
            ("assets/", "dir", ""),
            ("assets/app.js", "file", "go()"),
            ("bin/run.sh", "exec", "#!/bin/sh\n"),
            ("assets/home.html", "symlink", "../index.html"),
        ],
    )

    result = release(artifact, config, "zip-1")

    folder = Path(result["path"])
    assert result["files"] == 4
    assert os.readlink(folder / "assets" / "home.html") == "../index.html"
    assert (root / "current" / "assets" / "home.html").read_text(encoding="utf-8") == (
        "<h1>zip</h1>"
    )
    assert os.stat(folder / "bin" / "run.sh").st_mode & 0o100
    assert not os.stat(folder / "index.html").st_mode & 0o111
    assert current_of(root) == f"releases/{rid('prod', 'zip-1')}"


def test_release_second_key_switches_current(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    first = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    second = release(make_tree("v2", {"index.html": "two"}), config, "k2")

    assert first["release_id"] != second["release_id"]
    assert current_of(root) == f"releases/{second['release_id']}"
    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "two"
    assert release_folders(root) == sorted([first["release_id"], second["release_id"]])


def test_release_same_key_twice_reuses_and_leaves_current_alone(
    root: Path, config: dict[str, Any], make_tree: Any, snapshot: Any
) -> None:
    first = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    newer = release(make_tree("v2", {"index.html": "two"}), config, "k2")
    before = snapshot(root)

    again = release(make_tree("v1-rebuilt", {"index.html": "ONE"}), config, "k1")

    assert again == {**first, "reused": True}
    assert current_of(root) == f"releases/{newer['release_id']}"
    assert snapshot(root) == before
    assert release_folders(root) == sorted([first["release_id"], newer["release_id"]])
    assert (Path(first["path"]) / "index.html").read_text(encoding="utf-8") == "one"


def test_release_reused_result_needs_no_artifact(
    root: Path, config: dict[str, Any], make_tree: Any, tmp_path: Path
) -> None:
    first = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    again = release(tmp_path / "gone.tar.gz", config, "k1")

    assert again == {**first, "reused": True}


def test_release_same_key_other_target_is_a_new_release(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    artifact = make_tree("v1", {"index.html": "one"})
    staging = release(artifact, config, "k1", target="staging")
    prod = release(artifact, config, "k1", target="prod")

    assert staging["release_id"] == rid("staging", "k1")
    assert prod["release_id"] == rid("prod", "k1")
    assert prod["reused"] is False
    assert current_of(root) == f"releases/{prod['release_id']}"


def test_release_journal_holds_result_and_is_json(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    journal_path = root / ".turnout" / "keys" / f"{result['release_id']}.json"
    journal = json.loads(journal_path.read_text(encoding="utf-8"))
    assert journal["format"] == 1
    assert journal["target"] == "prod"
    assert journal["idempotency_key"] == "k1"
    assert journal["result"] == result
    assert json.loads(json.dumps(result)) == result
    assert os.stat(journal_path).st_mode & 0o077 == 0
    assert [p.name for p in journal_path.parent.iterdir()] == [journal_path.name]


def test_release_prune_keeps_newest_n(root: Path, make_tree: Any) -> None:
    config = {"root": str(root), "keep": 2}
    results = [
        release(make_tree(f"v{n}", {"index.html": str(n)}), config, f"k{n}") for n in range(4)
    ]

    kept = {results[2]["release_id"], results[3]["release_id"]}
    assert set(release_folders(root)) == kept
    assert current_of(root) == f"releases/{results[3]['release_id']}"
    # Pruned releases stay "done": replaying their key publishes nothing.
    replay = release(make_tree("v0-again", {"index.html": "0"}), config, "k0")
    assert replay["reused"] is True
    assert set(release_folders(root)) == kept


def plant_unjournaled_release(root: Path, key: str, created: float) -> Path:
    """Leave a release folder without journal, as a call that died after unpacking does."""
    folder = root / "releases" / rid("prod", key)
    folder.mkdir(parents=True)
    (folder / "index.html").write_text(key, encoding="utf-8")
    marker = {"release_id": folder.name, "created": created}
    (folder / ".turnout-release.json").write_text(json.dumps(marker), encoding="utf-8")
    return folder


def test_release_prune_removes_old_unjournaled_folders(root: Path, make_tree: Any) -> None:
    config = {"root": str(root), "keep": 1}
    plant_unjournaled_release(root, "orphan", created=1.0)

    newest = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    assert release_folders(root) == [newest["release_id"]]


def test_release_prune_never_removes_current(root: Path, make_tree: Any) -> None:
    config = {"root": str(root), "keep": 1}
    newest = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    old = plant_unjournaled_release(root, "old", created=1.0)

    # Finishing the old release points `current` at the oldest folder there is.
    recovered = release(root / "no-artifact-needed", config, "old")

    assert recovered["path"] == str(old)
    assert current_of(root) == f"releases/{old.name}"
    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "old"
    # keep=1 keeps the newest by creation time, and the older one `current` points to.
    assert release_folders(root) == sorted([old.name, newest["release_id"]])


def test_release_finishes_folder_left_without_journal(
    root: Path, config: dict[str, Any], make_tree: Any, tmp_path: Path
) -> None:
    done = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    crashed = release(make_tree("v2", {"index.html": "two"}), config, "k2")
    # Rewind to "unpacked and renamed, but current not switched and no journal".
    (root / ".turnout" / "keys" / f"{crashed['release_id']}.json").unlink()
    os.remove(root / "current")
    os.symlink(f"releases/{done['release_id']}", root / "current")

    assert (
        turnout_directory.turnout_probe(target="prod", config=config, idempotency_key="k2") is None
    )
    finished = release(tmp_path / "artifact-is-gone.tar.gz", config, "k2")

    assert finished == crashed
    assert current_of(root) == f"releases/{crashed['release_id']}"
    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "two"
    assert (root / ".turnout" / "keys" / f"{crashed['release_id']}.json").is_file()


def test_release_removes_leftover_temp_folder_and_never_uses_it(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    release_id = rid("prod", "k1")
    leftover = root / "releases" / f".tmp-{release_id}-deadbeef"
    leftover.mkdir(parents=True)
    (leftover / "half.html").write_text("partial", encoding="utf-8")
    stale_link = root / ".tmp-current-deadbeef"
    os.symlink("releases/nowhere", stale_link)

    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    assert sorted(os.listdir(result["path"])) == [".turnout-release.json", "index.html"]
    assert not leftover.exists()
    assert not os.path.lexists(stale_link)
    assert sorted(os.listdir(root / "releases")) == [release_id]


def test_release_marker_name_in_artifact_is_replaced_not_followed(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    artifact = make_tree("v1", {"index.html": "keep me"})
    os.symlink("index.html", artifact / ".turnout-release.json")

    result = release(artifact, config, "k1")

    folder = Path(result["path"])
    assert (folder / "index.html").read_text(encoding="utf-8") == "keep me"
    assert not (folder / ".turnout-release.json").is_symlink()
    assert (
        json.loads((folder / ".turnout-release.json").read_text(encoding="utf-8"))["release_id"]
        == result["release_id"]
    )
    assert (artifact / ".turnout-release.json").is_symlink()


@pytest.mark.parametrize("name", ["site.txt", "site.tar", "site.tar.bz2", "site.gz"])
def test_release_refuses_unknown_artifact_kind(
    root: Path, config: dict[str, Any], tmp_path: Path, name: str
) -> None:
    artifact = tmp_path / name
    artifact.write_bytes(b"not an archive")

    with pytest.raises(
        ValueError, match=r"is not a directory, a \.tar\.gz or \.tgz file"
    ) as caught:
        release(artifact, config, "k1")

    assert str(artifact) in str(caught.value)
    assert ".zip" in str(caught.value)
    assert not root.exists()


def test_release_missing_artifact_raises_file_not_found(
    root: Path, config: dict[str, Any], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="artifact does not exist"):
        release(tmp_path / "missing.zip", config, "k1")

    assert not root.exists()


@pytest.mark.parametrize(("name", "kind"), [("broken.tar.gz", ".tar.gz"), ("broken.zip", ".zip")])
def test_release_refuses_unreadable_archive(
    root: Path, config: dict[str, Any], tmp_path: Path, name: str, kind: str
) -> None:
    artifact = tmp_path / name
    artifact.write_bytes(b"\x1f\x8b garbage that is neither gzip nor zip")

    with pytest.raises(ValueError, match=f"is not a readable {re.escape(kind)}"):
        release(artifact, config, "k1")

    assert not root.exists()


def test_release_refuses_current_that_is_a_real_directory(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    (root / "current").mkdir(parents=True)
    (root / "current" / "index.html").write_text("hand made", encoding="utf-8")

    with pytest.raises(ValueError, match="exists and is not a symlink"):
        release(make_tree("v1", {"index.html": "one"}), config, "k1")

    assert (root / "current" / "index.html").read_text(encoding="utf-8") == "hand made"
    assert not (root / "releases").exists()


def test_release_refuses_artifact_directory_containing_root(tmp_path: Path, make_tree: Any) -> None:
    artifact = make_tree("whole", {"index.html": "one"})
    root = artifact / "site"

    with pytest.raises(ValueError, match="contains the root"):
        release(artifact, {"root": str(root)}, "k1")

    assert not root.exists()


def test_release_refuses_bad_config_before_writing(root: Path, make_tree: Any) -> None:
    with pytest.raises(ValueError, match="config 'keep' must be an integer >= 1, got 0"):
        release(make_tree("v1", {"index.html": "one"}), {"root": str(root), "keep": 0}, "k1")

    assert not root.exists()


@pytest.mark.parametrize(("target", "key"), [("", "k1"), ("prod", "")])
def test_release_refuses_empty_target_or_key(
    root: Path, config: dict[str, Any], make_tree: Any, target: str, key: str
) -> None:
    with pytest.raises(ValueError, match="must be a non-empty string"):
        release(make_tree("v1", {"index.html": "one"}), config, key, target=target)

    assert not root.exists()


def test_release_lock_held_elsewhere_times_out_as_transient(
    root: Path, config: dict[str, Any], make_tree: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_release, "LOCK_TIMEOUT", 0.3)
    (root / ".turnout").mkdir(parents=True)
    with open(root / ".turnout" / "lock", "w", encoding="utf-8") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)

        with pytest.raises(TimeoutError, match="still holds") as caught:
            release(make_tree("v1", {"index.html": "one"}), config, "k1")

    assert str(root) in str(caught.value)
    assert not (root / "releases").exists()
    # Once the lock is free, the retry succeeds.
    assert release(make_tree("v1b", {"index.html": "one"}), config, "k1")["reused"] is False


def test_release_corrupt_journal_is_refused_not_overwritten(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    journal = root / ".turnout" / "keys" / f"{result['release_id']}.json"
    journal.write_text("{not json", encoding="utf-8")

    with pytest.raises(ValueError, match="is unreadable"):
        release(make_tree("v1b", {"index.html": "one"}), config, "k1")

    assert journal.read_text(encoding="utf-8") == "{not json"


def test_probe_returns_none_before_and_result_after(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    assert (
        turnout_directory.turnout_probe(target="prod", config=config, idempotency_key="k1") is None
    )
    assert not root.exists()

    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    probed = turnout_directory.turnout_probe(target="prod", config=config, idempotency_key="k1")
    assert probed == {**result, "reused": True}
    assert (
        turnout_directory.turnout_probe(target="staging", config=config, idempotency_key="k1")
        is None
    )


def test_probe_writes_nothing(
    root: Path, config: dict[str, Any], make_tree: Any, snapshot: Any
) -> None:
    release(make_tree("v1", {"index.html": "one"}), config, "k1")
    shutil.rmtree(root / ".turnout" / "keys")
    before = snapshot(root)

    assert (
        turnout_directory.turnout_probe(target="prod", config=config, idempotency_key="k1") is None
    )

    assert snapshot(root) == before
