"""Shared fixtures: one conformance suite, parametrized over every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import agentcomm

BACKENDS = ["memory", "sqlite"]


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return str(request.param)


@pytest.fixture
def url(backend_name: str, tmp_path: Path) -> str:
    """A fresh store URL for the backend under test, shared by every hub a test opens on it."""
    if backend_name == "memory":
        return f"memory://{tmp_path.name}"
    return f"sqlite:///{tmp_path / 'agentcomm.db'}"


@pytest.fixture
def make_hub(url: str) -> Callable[..., agentcomm.Hub]:
    """Open more hubs on the test's store: `hub2 = await make_hub(lease=1.0)`."""

    def make(**kwargs: Any) -> agentcomm.Hub:
        return agentcomm.connect(url, **kwargs)

    return make


@pytest.fixture
async def hub(url: str) -> AsyncIterator[agentcomm.Hub]:
    """An open hub on a fresh store of the backend under test."""
    async with agentcomm.connect(url) as h:
        yield h
