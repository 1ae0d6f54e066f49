"""A releaser whose versions need conflicting versions of one helper library."""

import helperlib
import pluggy

VERSION = "@VERSION@"
hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(idempotency_key):
    return {
        "plugin_version": VERSION,
        "helper_version": helperlib.VERSION,
        "helper_file": helperlib.__file__,
        "key": idempotency_key,
    }
