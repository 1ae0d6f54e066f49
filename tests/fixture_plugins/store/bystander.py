"""Declares a second releaser whose import leaves a marker: it must never be loaded."""

import os

open(os.path.join(os.path.dirname(__file__), "BYSTANDER_IMPORTED"), "w").close()
