"""The agentcomm server: one HTTP door, with checked identities, in front of any backend.

`app.py` builds the Starlette application (`build_app`, which also takes extra mounts such as
`/mcp` or `/dashboard`), `run.py` runs it under uvicorn with a graceful SIGTERM, `tokens.py`
keeps the bearer tokens (hashes only) in the store, `authz.py` holds every permission check,
`limits.py` the size and rate limits, `errors.py` the error bodies, `schemas.py` the JSON
bodies, `routes_*.py` the `/v1` JSON API per feature, `rpc.py` the store calls the Python
client (`agentcomm._backends.http`) makes, and `openapi.py` the `/openapi.json` document.
See docs/server.md.
"""
