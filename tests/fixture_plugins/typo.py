"""Implements a misspelt hook, which pluggy must refuse to register silently."""

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(artifact):
    return {}


@hookimpl
def turnout_relase(artifact):
    return {}
