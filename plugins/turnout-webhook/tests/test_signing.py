from __future__ import annotations

import json
import re
from pathlib import Path

from turnout_webhook._signing import signature

README = Path(__file__).resolve().parents[1] / "README.md"

# The README's worked example, which receivers use to check their own verification.
BODY = (
    b'{"artifact":"https://ci.example.com/site.tgz","attempt":1,"context":{"plan":"pro"},'
    b'"idempotency_key":"build-42","target":"prod","timestamp":1764115200}'
)
RELEASE_SIGNATURE = "6213429f74e7c47e593aae2b081ad667c5f42249556ae6d6a664b5cf52d92690"
PROBE_SIGNATURE = "93078325f9ce916723e6eb783dbb420857a5569d71302d9c6e259632eb9749dc"


def test_signature_matches_readme_worked_example() -> None:
    assert signature("example-secret", 1764115200, BODY) == f"t=1764115200,v1={RELEASE_SIGNATURE}"
    assert signature("example-secret", 1764115200, b"build-42") == (
        f"t=1764115200,v1={PROBE_SIGNATURE}"
    )


def test_readme_shows_the_example_exactly() -> None:
    text = README.read_text(encoding="utf-8")
    assert BODY.decode() in text
    assert f"X-Turnout-Signature: t=1764115200,v1={RELEASE_SIGNATURE}" in text
    assert f"v1={PROBE_SIGNATURE}" in text
    # The body in the README is what the plugin would send: compact JSON, sorted keys.
    assert json.dumps(json.loads(BODY), separators=(",", ":"), sort_keys=True).encode() == BODY


def test_signature_depends_on_secret_time_and_content() -> None:
    base = signature("example-secret", 1764115200, BODY)
    assert re.fullmatch(r"t=1764115200,v1=[0-9a-f]{64}", base)
    assert signature("other-secret", 1764115200, BODY) != base
    assert signature("example-secret", 1764115201, BODY) != base
    assert signature("example-secret", 1764115200, BODY + b" ") != base
