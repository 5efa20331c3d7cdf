"""The web dashboard (`jetl ui`): runs, pipelines, dead letters and replay diffs, over the same library the CLI uses.

Needs the `ui` extra (`jetl[ui]`: starlette, uvicorn, jinja2, python-multipart); every asset it serves is packaged
here. The app: `jetl.ui.app.create_app(settings)`.
"""
