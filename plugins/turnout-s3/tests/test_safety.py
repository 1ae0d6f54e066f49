from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import turnout_s3


def release(artifact: Path, config: dict[str, Any], key: str) -> Any:
    return turnout_s3.turnout_release(
        artifact=str(artifact), target="prod", config=config, idempotency_key=key
    )


@pytest.fixture
def published(config: dict[str, Any], make_tree: Any) -> dict[str, Any]:
    """A bucket that already serves one good release, so a refusal can be seen to touch nothing."""
    result: dict[str, Any] = release(make_tree("good", {"index.html": "good"}), config, "good")
    return result


def assert_refused(
    artifact: Path, *, config: dict[str, Any], proxy: Any, objects: Any, bad_names: list[str]
) -> str:
    before = objects("")
    proxy.requests.clear()
    with pytest.raises(ValueError, match="s3: refusing artifact") as caught:
        release(artifact, config, "evil")
    message = str(caught.value)
    for name in bad_names:
        assert repr(name) in message
    assert proxy.writes() == []
    assert objects("") == before
    return message


TAR_ATTACKS = [
    pytest.param([("../evil", "file", "pwned")], "'..' component", id="dotdot"),
    pytest.param([("a/../../evil", "file", "pwned")], "'..' component", id="inner-dotdot"),
    pytest.param([("/etc/evil", "file", "x")], "absolute path", id="abs"),
    pytest.param([("C:/x", "file", "x")], "absolute path", id="drive"),
    pytest.param([("..\\x", "file", "x")], "backslash", id="backslash"),
    pytest.param([("a\nb", "file", "x")], "control character", id="newline"),
    pytest.param([("evil", "symlink", "/etc/passwd")], "symlink; S3 has no links", id="symlink"),
    pytest.param([("here", "symlink", "index.html")], "symlink; S3 has no links", id="inner-link"),
    pytest.param([("copy", "hardlink", "index.html")], "hardlink", id="hardlink"),
    pytest.param([("pipe", "fifo", "")], "device, fifo", id="fifo"),
    pytest.param([("index.html", "file", "2")], "duplicate entry", id="duplicate"),
]


@pytest.mark.parametrize(("members", "reason"), TAR_ATTACKS)
def test_release_tar_refuses_unsafe_entries_and_uploads_nothing(
    members: list[tuple[str, str, str]],
    reason: str,
    config: dict[str, Any],
    proxy: Any,
    objects: Any,
    published: dict[str, Any],
    make_tar: Any,
    read_json: Any,
) -> None:
    artifact = make_tar("evil.tar.gz", [("index.html", "file", "ok"), *members])

    message = assert_refused(
        artifact, config=config, proxy=proxy, objects=objects, bad_names=[members[-1][0]]
    )

    assert reason in message
    assert read_json("www/current.json")["release_id"] == published["release_id"]


ZIP_ATTACKS = [
    pytest.param([("../evil", "file", "pwned")], "'..' component", id="dotdot"),
    pytest.param([("/etc/evil", "file", "x")], "absolute path", id="abs"),
    pytest.param([("evil", "symlink", "/etc/passwd")], "symlink; S3 has no links", id="symlink"),
    pytest.param([("pipe", "fifo", "")], "device, fifo", id="fifo"),
]


@pytest.mark.parametrize(("members", "reason"), ZIP_ATTACKS)
def test_release_zip_refuses_unsafe_entries_and_uploads_nothing(
    members: list[tuple[str, str, str]],
    reason: str,
    config: dict[str, Any],
    proxy: Any,
    objects: Any,
    make_zip: Any,
) -> None:
    artifact = make_zip("evil.zip", [("index.html", "file", "ok"), *members])

    message = assert_refused(
        artifact, config=config, proxy=proxy, objects=objects, bad_names=[members[-1][0]]
    )

    assert reason in message


def test_release_tar_lists_every_bad_entry_on_fresh_bucket(
    config: dict[str, Any], proxy: Any, objects: Any, make_tar: Any
) -> None:
    artifact = make_tar(
        "evil.tar.gz",
        [
            ("index.html", "file", "ok"),
            ("../x", "file", "1"),
            ("/abs", "file", "2"),
            ("passwd", "symlink", "/etc/passwd"),
            ("late.html", "file", "ok"),
        ],
    )

    message = assert_refused(
        artifact, config=config, proxy=proxy, objects=objects, bad_names=["../x", "/abs", "passwd"]
    )

    assert "3 unsafe entries" in message
    assert "'late.html'" not in message
    assert objects("") == {}


@pytest.mark.parametrize("link", ["index.html", "/etc/passwd", "../outside"])
def test_release_directory_refuses_symlinks(
    link: str, config: dict[str, Any], proxy: Any, objects: Any, make_tree: Any
) -> None:
    artifact = make_tree("evil-dir", {"index.html": "ok", "deep/page.html": "ok"})
    os.symlink(link, artifact / "deep" / "link")

    message = assert_refused(
        artifact, config=config, proxy=proxy, objects=objects, bad_names=["deep/link"]
    )

    assert "symlink; S3 has no links" in message


def test_release_directory_refuses_fifo(
    config: dict[str, Any], proxy: Any, objects: Any, make_tree: Any
) -> None:
    artifact = make_tree("evil-dir", {"index.html": "ok"})
    os.mkfifo(artifact / "pipe")

    assert_refused(artifact, config=config, proxy=proxy, objects=objects, bad_names=["pipe"])


@pytest.mark.parametrize("name", ["site.txt", "site.tar", "site.tar.bz2", "site.gz"])
def test_release_refuses_unknown_artifact_kind(
    config: dict[str, Any], proxy: Any, tmp_path: Path, name: str
) -> None:
    artifact = tmp_path / name
    artifact.write_bytes(b"not an archive")

    with pytest.raises(ValueError, match=r"is not a directory, a \.tar\.gz or \.tgz file"):
        release(artifact, config, "k1")

    assert proxy.writes() == []


@pytest.mark.parametrize(("name", "kind"), [("broken.tar.gz", ".tar.gz"), ("broken.zip", ".zip")])
def test_release_refuses_unreadable_archive(
    config: dict[str, Any], proxy: Any, tmp_path: Path, name: str, kind: str
) -> None:
    artifact = tmp_path / name
    artifact.write_bytes(b"\x1f\x8b garbage that is neither gzip nor zip")

    with pytest.raises(ValueError, match=f"is not a readable \\{kind}"):
        release(artifact, config, "k1")

    assert proxy.writes() == []


def test_release_refuses_empty_artifact(config: dict[str, Any], proxy: Any, make_tar: Any) -> None:
    artifact = make_tar("empty.tar.gz", [("./", "dir", ""), ("docs/", "dir", "")])

    with pytest.raises(ValueError, match="holds no file; refusing to publish an empty site"):
        release(artifact, config, "k1")

    assert proxy.writes() == []


def test_release_missing_artifact_raises_file_not_found(
    config: dict[str, Any], proxy: Any, tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match="artifact does not exist"):
        release(tmp_path / "missing.zip", config, "k1")

    assert proxy.writes() == []


def test_release_refuses_keys_longer_than_s3_allows(
    config: dict[str, Any], proxy: Any, make_tree: Any
) -> None:
    deep = "/".join(["d" * 200] * 5) + "/index.html"
    artifact = make_tree("deep", {deep: "x"})

    with pytest.raises(ValueError, match="longer than 1024 bytes"):
        release(artifact, config, "k1")

    assert proxy.writes() == []
