"""``turnout serve``: a dashboard of targets, routes, error rates and releases, and its API.

Needs the ``turnout[web]`` extra (FastAPI, Jinja2, uvicorn); see :func:`create_app`.
"""

from turnout.web.app import create_app

__all__ = ["create_app"]
