"""A releaser whose import fails, as one with a missing dependency does."""

import turnout_fixture_missing_dependency  # noqa: F401

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact):
    return {"never": "reached"}
