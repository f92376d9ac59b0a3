"""The `http://` and `https://` backend: the contracts as calls to an agentcomm server."""

from .backend import HttpBackend

__all__ = ["HttpBackend"]
