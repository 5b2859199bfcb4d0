"""``featureguard serve``: an OpenAI-compatible HTTP API in front of a monitored model.

- :mod:`monitor.serve.protocol` — request bodies and OpenAI-style errors;
- :mod:`monitor.serve.rows` — one choice's text while it streams (hold-back, stop sequences,
  content filter);
- :mod:`monitor.serve.engine` — the queue and the worker that batches requests into
  ``guarded.generate`` calls;
- :mod:`monitor.serve.app` — the FastAPI routes, metrics middleware and admin endpoints;
- :mod:`monitor.serve.server` — uvicorn on a socket we bind (port 0 works);
- :mod:`monitor.serve.build` — assembling all of it from a model, a policy and options.

Needs the ``serve`` extra (FastAPI, uvicorn).
"""
