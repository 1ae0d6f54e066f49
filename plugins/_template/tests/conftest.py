"""Fixtures shared by the tests.

Helpers are handed out as fixtures because, with ``--import-mode=importlib``, test modules
cannot import each other or this file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def config(tmp_path: Path) -> dict[str, Any]:
    """A valid config: the releases land in a file of the test's own folder."""
    return {"path": str(tmp_path / "out" / "releases.jsonl")}


@pytest.fixture
def transient() -> Callable[[BaseException], bool]:
    """turnout's rule for whether an error is retried (the releaser contract)."""

    def rule(exc: BaseException) -> bool:
        return bool(getattr(exc, "retryable", False)) or isinstance(
            exc, TimeoutError | ConnectionError
        )

    return rule
