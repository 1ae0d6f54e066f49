"""Allocates 100 MB blocks until something stops it, or it holds config 'cap_mb' (1000)."""

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_release(config):
    hoard = []
    while len(hoard) * 100 < config.get("cap_mb", 1000):
        hoard.append(bytearray(100 << 20))
    return {"held_mb": len(hoard) * 100}
