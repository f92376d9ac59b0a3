"""The public face: what `agentcomm` exports, its error tree, and URL handling."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import agentcomm


def test_every_export_is_documented_and_owned_by_the_package() -> None:
    for name in agentcomm.__all__:
        obj = getattr(agentcomm, name)
        assert inspect.getdoc(obj), f"agentcomm.{name} has no docstring"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "agentcomm", name
    assert agentcomm.__all__ == sorted(agentcomm.__all__)


def test_public_methods_have_docstrings() -> None:
    for cls in (
        agentcomm.Hub, agentcomm.Agent, agentcomm.Message, agentcomm.Reply, agentcomm.Pool,
        agentcomm.Wake,
    ):  # fmt: skip
        for name, member in vars(cls).items():
            if name.startswith("_"):
                continue
            assert inspect.getdoc(member), f"{cls.__name__}.{name} has no docstring"


def test_every_error_is_rooted_in_agentcommerror() -> None:
    errors = [
        obj
        for obj in vars(agentcomm).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ]
    assert len(errors) >= 10
    for err in errors:
        assert issubclass(err, agentcomm.AgentCommError), err
    assert issubclass(agentcomm.RequestTimeout, TimeoutError)
    assert issubclass(agentcomm.ValidationError, ValueError)
    assert issubclass(agentcomm.UnknownAgent, LookupError)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://x", "Unknown backend scheme 'ftp'"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///x.db?fast=1", "Unknown sqlite URL option"),
        ("sqlite:///x.db?synchronous=sometimes", "synchronous must be one of"),
        ("sqlite:///x.db?busy_timeout=soon", "Bad sqlite URL option"),
    ],
)
def test_bad_urls_raise_configuration_error(url: str, fragment: str) -> None:
    with pytest.raises(agentcomm.ConfigurationError, match=fragment):
        agentcomm.connect(url)


def test_bad_hub_settings_raise_validation_error() -> None:
    with pytest.raises(agentcomm.ValidationError):
        agentcomm.connect("memory://", lease=0)
    with pytest.raises(agentcomm.ValidationError):
        agentcomm.connect("memory://", max_attempts=0)
    with pytest.raises(agentcomm.ValidationError):
        agentcomm.Retention(acked=-1)
    with pytest.raises(agentcomm.ValidationError):
        agentcomm.Backoff(factor=0.5)


async def test_default_url_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTCOMM_URL", f"sqlite:///{tmp_path / 'env.db'}")
    async with agentcomm.connect() as hub:
        await hub.agent("a")
    assert (tmp_path / "env.db").exists()
    assert not (tmp_path / "env.db.wake").exists()  # the last hub out removes its registry


async def test_hub_is_awaitable_and_used_before_open_raises(tmp_path: Path) -> None:
    hub = agentcomm.connect("memory://")
    with pytest.raises(agentcomm.HubClosed, match="not open yet"):
        await hub.agents()
    opened = await hub
    assert opened is hub
    assert await hub.agents() == []
    await hub.aclose()


async def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.db"
    bogus.write_text("not sqlite")
    with pytest.raises(agentcomm.BackendError, match="not an agentcomm SQLite database"):
        await agentcomm.connect(f"sqlite:///{bogus}")


def test_the_namespace_is_exactly_all() -> None:
    # httpx's rule: every public name of the package is in __all__, and nothing else is public;
    # implementation modules are private (`agentcomm._hub`, ...)
    public = sorted(
        (name for name in vars(agentcomm) if not name.startswith("_")), key=str.casefold
    )
    assert public == sorted(agentcomm.__all__, key=str.casefold)


@pytest.mark.slow
def test_users_type_checker_sees_the_types(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "user.py"
    snippet.write_text(
        "import agentcomm\n"
        "hub: int = agentcomm.connect('memory://')\n"  # wrong on purpose: needs real types
    )
    out, err, status = api.run(["--strict", "--no-incremental", str(snippet)])
    assert status == 1, out + err
    assert 'incompatible type "Hub"' in out or '"Hub", variable has type "int"' in out, out
    assert "py.typed" not in out, out
