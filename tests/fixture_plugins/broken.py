"""A releaser whose import fails, as one with a missing dependency does."""

import pluggy
import turnout_fixture_missing_dependency  # noqa: F401

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact):
    return {"never": "reached"}
