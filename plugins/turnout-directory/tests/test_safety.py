from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import turnout_directory


def release(artifact: Path, config: dict[str, Any], key: str) -> Any:
    return turnout_directory.turnout_release(
        artifact=str(artifact), target="prod", config=config, idempotency_key=key
    )


@pytest.fixture
def published(root: Path, config: dict[str, Any], make_tree: Any) -> dict[str, Any]:
    """A root that already serves one good release, so a refusal can be seen to touch nothing."""
    result: dict[str, Any] = release(make_tree("good", {"index.html": "good"}), config, "good")
    return result


def assert_refused(
    artifact: Path,
    *,
    config: dict[str, Any],
    root: Path,
    outside: Path,
    snapshot: Any,
    bad_names: list[str],
) -> str:
    before = snapshot(root)
    with pytest.raises(ValueError, match="directory: refusing artifact") as caught:
        release(artifact, config, "evil")
    message = str(caught.value)
    for name in bad_names:
        assert repr(name) in message
    assert snapshot(root) == before
    assert not outside.exists()
    assert not os.path.lexists(Path("/tmp/turnout-directory-escaped"))
    return message


TAR_ATTACKS = [
    pytest.param([("../outside/x", "file", "pwned")], "'..' component", id="dotdot"),
    pytest.param([("/tmp/turnout-directory-escaped", "file", "x")], "absolute path", id="abs"),
    pytest.param([("C:/x", "file", "x")], "absolute path", id="drive"),
    pytest.param([("..\\x", "file", "x")], "backslash", id="backslash"),
    pytest.param([("evil", "symlink", "/etc/passwd")], "absolute link target", id="abs-symlink"),
    pytest.param(
        [("sub/", "dir", ""), ("sub/up", "symlink", "../../outside")],
        "points outside the release folder",
        id="relative-symlink",
    ),
    pytest.param(
        [("up", "symlink", "..")], "points outside the release folder", id="symlink-to-parent"
    ),
    pytest.param(
        [("steal", "hardlink", "../outside/secret")],
        "points outside the release folder",
        id="hardlink-dotdot",
    ),
    pytest.param([("steal", "hardlink", "/etc/passwd")], "absolute link target", id="hardlink-abs"),
    pytest.param(
        [("copy", "hardlink", "missing.html")],
        "not an earlier regular file",
        id="hardlink-dangling",
    ),
    pytest.param(
        [("here", "symlink", "."), ("sub/", "dir", ""), ("up", "symlink", "here/sub/../..")],
        "points outside the release folder",
        id="symlink-through-symlink",
    ),
    pytest.param(
        [("dir", "symlink", "sub"), ("sub/", "dir", ""), ("dir/x", "file", "x")],
        "placed inside symlink 'dir'",
        id="write-through-symlink",
    ),
    pytest.param([("pipe", "fifo", "")], "device, fifo", id="fifo"),
    pytest.param([("tty", "chr", "")], "device, fifo", id="device"),
    pytest.param(
        [("a.html", "file", "1"), ("a.html", "file", "2")], "duplicate entry", id="duplicate"
    ),
]


@pytest.mark.parametrize(("members", "reason"), TAR_ATTACKS)
def test_release_tar_refuses_escaping_entries(
    members: list[tuple[str, str, str]],
    reason: str,
    root: Path,
    config: dict[str, Any],
    outside: Path,
    published: dict[str, Any],
    make_tar: Any,
    snapshot: Any,
) -> None:
    artifact = make_tar("evil.tar.gz", [("index.html", "file", "ok"), *members])
    bad = [members[-1][0]]

    message = assert_refused(
        artifact, config=config, root=root, outside=outside, snapshot=snapshot, bad_names=bad
    )

    assert reason in message
    assert "'index.html'" not in message
    assert os.readlink(root / "current") == f"releases/{published['release_id']}"


ZIP_ATTACKS = [
    pytest.param([("../outside/x", "file", "pwned")], "'..' component", id="dotdot"),
    pytest.param([("/tmp/turnout-directory-escaped", "file", "x")], "absolute path", id="abs"),
    pytest.param([("C:/Windows/x", "file", "x")], "absolute path", id="drive"),
    pytest.param([("..\\..\\x", "file", "x")], "backslash", id="backslash"),
    pytest.param([("evil", "symlink", "/etc/passwd")], "absolute link target", id="abs-symlink"),
    pytest.param(
        [("sub/up", "symlink", "../../outside")],
        "points outside the release folder",
        id="relative-symlink",
    ),
    pytest.param(
        [("dir", "symlink", "sub"), ("dir/x", "file", "x")],
        "placed inside symlink 'dir'",
        id="write-through-symlink",
    ),
    pytest.param([("pipe", "fifo", "")], "device, fifo", id="fifo"),
    pytest.param(
        [("a.html", "file", "1"), ("a.html", "file", "2")], "duplicate entry", id="duplicate"
    ),
]


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
@pytest.mark.parametrize(("members", "reason"), ZIP_ATTACKS)
def test_release_zip_refuses_escaping_entries(
    members: list[tuple[str, str, str]],
    reason: str,
    root: Path,
    config: dict[str, Any],
    outside: Path,
    published: dict[str, Any],
    make_zip: Any,
    snapshot: Any,
) -> None:
    artifact = make_zip("evil.zip", [("index.html", "file", "ok"), *members])
    bad = [members[-1][0]]

    message = assert_refused(
        artifact, config=config, root=root, outside=outside, snapshot=snapshot, bad_names=bad
    )

    assert reason in message
    assert "'index.html'" not in message
    assert os.readlink(root / "current") == f"releases/{published['release_id']}"


def test_release_tar_lists_every_bad_entry_and_writes_nothing_on_fresh_root(
    root: Path, config: dict[str, Any], outside: Path, make_tar: Any
) -> None:
    artifact = make_tar(
        "evil.tar.gz",
        [
            ("index.html", "file", "ok"),
            ("../x", "file", "1"),
            ("/abs", "file", "2"),
            ("passwd", "symlink", "/etc/passwd"),
            ("sub/up", "symlink", "../../x"),
            ("steal", "hardlink", "../../x"),
            ("late.html", "file", "ok"),
        ],
    )

    with pytest.raises(ValueError, match="5 unsafe entries") as caught:
        release(artifact, config, "evil")

    message = str(caught.value)
    for name in ("../x", "/abs", "passwd", "sub/up", "steal"):
        assert repr(name) in message
    assert message.index("'../x'") < message.index("'steal'")
    assert "'late.html'" not in message
    assert not root.exists()
    assert not outside.exists()


def test_release_zip_lists_every_bad_entry_and_writes_nothing_on_fresh_root(
    root: Path, config: dict[str, Any], make_zip: Any
) -> None:
    artifact = make_zip(
        "evil.zip",
        [("index.html", "file", "ok"), ("../x", "file", "1"), ("link", "symlink", "../../etc")],
    )

    with pytest.raises(ValueError, match="2 unsafe entries") as caught:
        release(artifact, config, "evil")

    assert "'../x'" in str(caught.value)
    assert "'link' (symlink to '../../etc'" in str(caught.value)
    assert not root.exists()


@pytest.mark.parametrize(
    ("name", "link", "reason"),
    [
        ("passwd", "/etc/passwd", "absolute link target"),
        ("up", "../outside/secret", "points outside the artifact directory"),
        ("deep/up", "../../outside", "points outside the artifact directory"),
    ],
)
def test_release_directory_refuses_symlink_pointing_outside(
    name: str,
    link: str,
    reason: str,
    root: Path,
    config: dict[str, Any],
    outside: Path,
    published: dict[str, Any],
    make_tree: Any,
    snapshot: Any,
) -> None:
    artifact = make_tree("evil-dir", {"index.html": "ok", "deep/page.html": "ok"})
    os.symlink(link, artifact / name)

    message = assert_refused(
        artifact, config=config, root=root, outside=outside, snapshot=snapshot, bad_names=[name]
    )

    assert reason in message
    assert os.readlink(root / "current") == f"releases/{published['release_id']}"


def test_release_directory_refuses_symlink_escaping_through_inner_symlink(
    root: Path, config: dict[str, Any], make_tree: Any
) -> None:
    artifact = make_tree("evil-dir", {"index.html": "ok", "deep/page.html": "ok"})
    os.symlink("deep", artifact / "alias")
    os.symlink("alias/../../outside", artifact / "sneaky")

    with pytest.raises(ValueError, match="'sneaky'"):
        release(artifact, config, "evil")

    assert not root.exists()


def test_release_directory_refuses_fifo(root: Path, config: dict[str, Any], make_tree: Any) -> None:
    artifact = make_tree("evil-dir", {"index.html": "ok"})
    os.mkfifo(artifact / "pipe")

    with pytest.raises(ValueError, match=r"'pipe' \(device, fifo or other special file\)"):
        release(artifact, config, "evil")

    assert not root.exists()
