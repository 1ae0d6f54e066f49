"""Declares the entry point but implements no turnout_release."""

import pluggy

hookimpl = pluggy.HookimplMarker("turnout")


@hookimpl
def turnout_validate_config(config):
    return None
