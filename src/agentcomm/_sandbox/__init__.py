"""The sandbox channel: a host and a sandboxed agent that share only a directory.

`host.py` and `box.py` are the two sides, `store.py` the SQLite thread of one side, `schema.py`
the two files' tables, `wake.py` the wake-ups, `sweep.py` the host's recovery pass, `bridge.py`
the link into a hub. The public names are re-exported by `agentcomm.sandbox`.
"""
