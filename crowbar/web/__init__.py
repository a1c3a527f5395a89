"""The web UI: the room for Crowbar's pages in a browser.

The UI is a client, like the CLI: its pages call the same HTTP API (/api/v2) from the browser, with
the user's token, and show what it answers; no module here imports server-side code
(tests/test_layers.py holds it to that). What goes here:

- `static/`: the pages, scripts, styles and images, served as files (list them under
  `[tool.setuptools.package-data]` in pyproject.toml so an installed crowbar has them);
- `static/index.html` and its client-side router: one page that maps the UI's paths (nodes,
  deployments, noderoles, the anneal progress, events) to views, each drawn from API answers.

The server serves `static/` under `/ui` as plain files, found as a path
(`importlib.resources.files("crowbar") / "web" / "static"`) rather than by importing this package,
so the API and the server stay below the clients and a page never needs a route of its own.
"""
