from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import turnout_s3
from turnout_s3._release import content_type

SITE: dict[str, str | bytes] = {
    "index.html": "<h1>v1</h1>",
    "css/site.css": "body{}",
    "js/app.js": "go()",
    "img/logo.png": b"\x89PNG\r\n\x1a\n",
    "fonts/a.woff2": b"wOF2",
    "data/feed.json": "{}",
    "LICENSE": "MIT",
}


def rid(target: str, key: str) -> str:
    return hashlib.sha256(f"{target}\0{key}".encode()).hexdigest()[:20]


def release(artifact: Path | str, config: dict[str, Any], key: str, target: str = "prod") -> Any:
    return turnout_s3.turnout_release(
        artifact=str(artifact), target=target, config=config, idempotency_key=key
    )


def probe(config: dict[str, Any], key: str, target: str = "prod") -> Any:
    return turnout_s3.turnout_probe(target=target, config=config, idempotency_key=key)


def uploads(proxy: Any, under: str = "/releases/") -> list[str]:
    return [path for method, path in proxy.writes() if method == "PUT" and under in path]


def test_release_directory_uploads_every_file_then_switches_pointer(
    config: dict[str, Any], bucket: str, make_tree: Any, proxy: Any, s3: Any, read_json: Any
) -> None:
    result = release(make_tree("build", SITE), config, "k1")

    expected = rid("prod", "k1")
    prefix = f"www/releases/{expected}/"
    assert result == {
        "release_id": expected,
        "bucket": bucket,
        "prefix": prefix,
        "pointer": "www/current.json",
        "url": f"s3://{bucket}/{prefix}",
        "files": len(SITE),
        "bytes": sum(len(v) for v in SITE.values()),
        "idempotency_key": "k1",
        "reused": False,
    }
    for name, content in SITE.items():
        body = s3.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        assert body == (content if isinstance(content, bytes) else content.encode())
    pointer = read_json("www/current.json")
    assert pointer["release_id"] == expected
    assert pointer["prefix"] == prefix
    head = s3.head_object(Bucket=bucket, Key="www/current.json")
    assert head["ContentType"] == "application/json"
    assert head["CacheControl"] == "no-cache, max-age=0"
    manifest = read_json(f"www/manifests/{expected}.json")
    assert manifest["switched"] is True
    assert manifest["result"] == result
    # Every file first, then the manifest, then the pointer: the one PUT readers see is last.
    writes = [path.split("/www/", 1)[1] for _, path in proxy.writes()]
    assert writes[: len(SITE)] == sorted(f"releases/{expected}/{n}" for n in SITE)
    assert writes[len(SITE) :] == [
        f"manifests/{expected}.json",
        "current.json",
        f"manifests/{expected}.json",
    ]


def test_release_sets_content_type_of_each_file(
    config: dict[str, Any], bucket: str, make_tree: Any, s3: Any
) -> None:
    result = release(make_tree("build", SITE), config, "k1")

    types = {
        name: s3.head_object(Bucket=bucket, Key=result["prefix"] + name)["ContentType"]
        for name in SITE
    }
    assert types == {
        "index.html": "text/html; charset=utf-8",
        "css/site.css": "text/css; charset=utf-8",
        "js/app.js": "text/javascript; charset=utf-8",
        "img/logo.png": "image/png",
        "fonts/a.woff2": "font/woff2",
        "data/feed.json": "application/json; charset=utf-8",
        "LICENSE": "application/octet-stream",
    }


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Index.HTML", "text/html; charset=utf-8"),
        ("a/b/page.htm", "text/html; charset=utf-8"),
        ("app.mjs", "text/javascript; charset=utf-8"),
        ("logo.svg", "image/svg+xml; charset=utf-8"),
        ("photo.jpeg", "image/jpeg"),
        ("photo.webp", "image/webp"),
        ("app.wasm", "application/wasm"),
        ("site.webmanifest", "application/manifest+json; charset=utf-8"),
        ("favicon.ico", "image/vnd.microsoft.icon"),
        ("doc.pdf", "application/pdf"),
        ("notes.txt", "text/plain; charset=utf-8"),
        ("download.tar.gz", "application/gzip"),
        ("Makefile", "application/octet-stream"),
        (".hidden", "application/octet-stream"),
        ("file.unknownext", "application/octet-stream"),
    ],
)
def test_content_type_is_told_from_the_name(name: str, expected: str) -> None:
    assert content_type(name) == expected


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz"])
def test_release_tar_artifact_uploads_its_files(
    config: dict[str, Any], bucket: str, make_tar: Any, s3: Any, objects: Any, suffix: str
) -> None:
    artifact = make_tar(
        f"site{suffix}",
        [
            ("./", "dir", ""),
            ("./index.html", "file", "<h1>tar</h1>"),
            ("./docs/", "dir", ""),
            ("./docs/guide.html", "file", "guide"),
        ],
    )

    result = release(artifact, config, "tar-1")

    assert result["files"] == 2
    assert sorted(objects(result["prefix"])) == [
        result["prefix"] + "docs/guide.html",
        result["prefix"] + "index.html",
    ]
    body = s3.get_object(Bucket=bucket, Key=result["prefix"] + "index.html")["Body"].read()
    assert body == b"<h1>tar</h1>"


def test_release_zip_artifact_uploads_its_files(
    config: dict[str, Any], bucket: str, make_zip: Any, s3: Any, objects: Any
) -> None:
    artifact = make_zip(
        "site.zip",
        [
            ("index.html", "file", "<h1>zip</h1>"),
            ("assets/", "dir", ""),
            ("assets/a.js", "file", "x"),
        ],
    )

    result = release(artifact, config, "zip-1")

    assert result["files"] == 2
    assert sorted(objects(result["prefix"])) == [
        result["prefix"] + "assets/a.js",
        result["prefix"] + "index.html",
    ]
    head = s3.head_object(Bucket=bucket, Key=result["prefix"] + "assets/a.js")
    assert head["ContentType"] == "text/javascript; charset=utf-8"


def test_release_without_prefix_uses_bucket_top(
    config: dict[str, Any], make_tree: Any, read_json: Any, objects: Any
) -> None:
    del config["prefix"]

    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    assert result["pointer"] == "current.json"
    assert read_json("current.json")["prefix"] == f"releases/{result['release_id']}/"
    assert f"releases/{result['release_id']}/index.html" in objects("")


def test_release_second_key_switches_pointer(
    config: dict[str, Any], make_tree: Any, read_json: Any, objects: Any
) -> None:
    first = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    second = release(make_tree("v2", {"index.html": "two"}), config, "k2")

    assert first["release_id"] != second["release_id"]
    assert read_json("www/current.json")["release_id"] == second["release_id"]
    assert objects(first["prefix"])  # the previous release stays (keep defaults to 5)


def test_release_same_key_twice_uploads_nothing(
    config: dict[str, Any], make_tree: Any, proxy: Any, objects: Any, read_json: Any
) -> None:
    first = release(make_tree("v1", SITE), config, "k1")
    newer = release(make_tree("v2", {"index.html": "two"}), config, "k2")
    before = objects("")
    proxy.requests.clear()

    again = release(make_tree("v1-rebuilt", {"index.html": "ONE"}), config, "k1")

    assert again == {**first, "reused": True}
    assert proxy.writes() == []
    assert objects("") == before  # same keys, ETags and LastModified
    # Not switched back: the newer release stays live.
    assert read_json("www/current.json")["release_id"] == newer["release_id"]


def test_release_fault_mid_upload_keeps_previous_release_live(
    config: dict[str, Any], make_tree: Any, proxy: Any, objects: Any, read_json: Any
) -> None:
    live = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    site = {f"page{i}.html": f"page {i}" for i in range(6)}
    artifact = make_tree("v2", site)
    puts: list[str] = []

    def fail_fourth_file(method: str, path: str) -> Any:
        if method == "PUT" and "/releases/" in path:
            puts.append(path)
            if len(puts) >= 4:  # the 4th file and botocore's own retry of it
                return (500, "InternalError", "We encountered an internal error.")
        return None

    proxy.fault = fail_fourth_file
    with pytest.raises(turnout_s3.S3ServiceError) as caught:
        release(artifact, config, "k2")

    assert caught.value.retryable is True
    assert caught.value.code == "InternalError"
    pointer = read_json("www/current.json")
    assert pointer["release_id"] == live["release_id"]
    k2 = rid("prod", "k2")
    assert f"www/manifests/{k2}.json" not in objects("www/manifests/")
    assert len(objects(f"www/releases/{k2}/")) == 3
    assert probe(config, "k2") is None

    # Healed: the retry with the same key uploads only what is missing, then switches.
    proxy.fault = None
    proxy.requests.clear()
    result = release(artifact, config, "k2")

    assert len(uploads(proxy)) == 3
    assert result["files"] == 6
    assert read_json("www/current.json")["release_id"] == k2
    assert len(objects(f"www/releases/{k2}/")) == 6


def test_release_retry_after_failed_switch_only_switches(
    config: dict[str, Any], make_tree: Any, proxy: Any, read_json: Any, tmp_path: Path
) -> None:
    live = release(make_tree("v1", {"index.html": "one"}), config, "k1")

    def refuse_pointer(method: str, path: str) -> Any:
        if method == "PUT" and path.endswith("/current.json"):
            return (503, "SlowDown", "Please reduce your request rate.")
        return None

    proxy.fault = refuse_pointer
    with pytest.raises(turnout_s3.S3ServiceError, match="SlowDown"):
        release(make_tree("v2", {"index.html": "two", "a.css": "a"}), config, "k2")

    k2 = rid("prod", "k2")
    assert read_json(f"www/manifests/{k2}.json")["switched"] is False
    assert read_json("www/current.json")["release_id"] == live["release_id"]
    assert probe(config, "k2") is None

    proxy.fault = None
    proxy.requests.clear()
    # The upload is complete, so the artifact is not even needed any more.
    result = release(tmp_path / "gone.tar.gz", config, "k2")

    assert result["release_id"] == k2
    assert result["reused"] is False
    assert result["files"] == 2
    assert uploads(proxy) == []
    assert [p.rsplit("/", 1)[1] for _, p in proxy.writes()] == ["current.json", f"{k2}.json"]
    assert read_json("www/current.json")["release_id"] == k2
    assert probe(config, "k2") == {**result, "reused": True}


def test_release_keep_prunes_oldest_and_old_keys_stay_done(
    config: dict[str, Any], make_tree: Any, proxy: Any, objects: Any, read_json: Any
) -> None:
    config["keep"] = 2
    results = [
        release(make_tree(f"v{i}", {"index.html": str(i)}), config, f"k{i}") for i in range(4)
    ]

    remaining = {key.split("/")[2] for key in objects("www/releases/")}
    assert remaining == {results[2]["release_id"], results[3]["release_id"]}
    old = read_json(f"www/manifests/{results[0]['release_id']}.json")
    assert old["pruned"] is True

    proxy.requests.clear()
    again = release(make_tree("v0-again", {"index.html": "0"}), config, "k0")

    assert again == {**results[0], "reused": True}
    assert proxy.writes() == []
    assert read_json("www/current.json")["release_id"] == results[3]["release_id"]


def test_release_prune_never_removes_the_live_release(
    config: dict[str, Any], make_tree: Any, proxy: Any, s3: Any, bucket: str, objects: Any
) -> None:
    results = [
        release(make_tree(f"v{i}", {"index.html": str(i)}), config, f"k{i}") for i in range(3)
    ]
    config["keep"] = 1
    k3 = rid("prod", "k3")
    oldest = results[0]
    rollback = {
        "format": 1,
        "release_id": oldest["release_id"],
        "prefix": oldest["prefix"],
        "target": "prod",
        "idempotency_key": "k0",
        "published_at": "2026-01-01T00:00:00+00:00",
    }

    def repoint_after_switch(method: str, path: str) -> Any:
        # Another writer points readers back at the oldest release between this release's
        # switch and its pruning (the second write of its manifest comes in between).
        switched = any(p.endswith("/current.json") for _, p in proxy.writes())
        if method == "PUT" and path.endswith(f"/manifests/{k3}.json") and switched:
            s3.put_object(Bucket=bucket, Key="www/current.json", Body=json.dumps(rollback))
        return None

    proxy.requests.clear()
    proxy.fault = repoint_after_switch
    release(make_tree("v3", {"index.html": "3"}), config, "k3")

    remaining = {key.split("/")[2] for key in objects("www/releases/")}
    assert remaining == {oldest["release_id"], k3}


def test_probe_answers_none_before_and_result_after_without_writing(
    config: dict[str, Any], make_tree: Any, proxy: Any
) -> None:
    assert probe(config, "k1") is None

    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    proxy.requests.clear()

    assert probe(config, "k1") == {**result, "reused": True}
    assert probe(config, "k1", target="staging") is None
    assert probe(config, "k2") is None
    assert proxy.writes() == []


def test_release_refuses_manifest_of_another_key(
    config: dict[str, Any], make_tree: Any, s3: Any, bucket: str, read_json: Any
) -> None:
    result = release(make_tree("v1", {"index.html": "one"}), config, "k1")
    key = f"www/manifests/{result['release_id']}.json"
    manifest = read_json(key)
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({**manifest, "target": "x"}))

    with pytest.raises(ValueError, match="belongs to another target or key"):
        release(make_tree("v1b", {"index.html": "one"}), config, "k1")


@pytest.mark.parametrize(("target", "key"), [("", "k1"), ("prod", "")])
def test_release_refuses_empty_target_or_key(
    config: dict[str, Any], make_tree: Any, proxy: Any, target: str, key: str
) -> None:
    with pytest.raises(ValueError, match="must be a non-empty string"):
        release(make_tree("v1", {"index.html": "one"}), config, key, target=target)
    assert proxy.requests == []
