"""The Redis backend (`redis://`, `rediss://`); needs the `redis` extra."""

from .backend import RedisBackend

__all__ = ["RedisBackend"]
