"""Returns results that are not JSON mappings, chosen by config 'kind'."""

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(config):
    kind = config.get("kind", "list")
    if kind == "list":
        return ["not", "a", "mapping"]
    if kind == "none":
        return None
    if kind == "object":
        return {"value": object()}
    return {"big": "x" * (2 << 20)}
