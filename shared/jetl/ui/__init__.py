"""The web dashboard (`jetl ui`): runs, pipelines, dead letters and replay diffs, over the same library the CLI uses.

Needs the `ui` extra (`jetl[ui]`: starlette, uvicorn, jinja2); every asset it serves is packaged here.
"""

from jetl.ui.app import create_app

__all__ = ["create_app"]
