"""Fails at import, as a plugin with a missing dependency does; counts its imports.

The test bakes a file path into @COUNTER@; every import appends one line there first. It then
prints a hint to stderr, which the load error must carry, and fails.
"""

import sys

with open("@COUNTER@", "a", encoding="utf-8") as counter:
    counter.write("imported\n")
print("hint: pip install turnout-fault-missing-dependency", file=sys.stderr)

import pluggy  # noqa: E402
import turnout_fault_missing_dependency  # noqa: E402, F401

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact):
    return {"never": "reached"}
