"""Fixtures for tests that need a real database server and a real pyproxy process.

``db_server`` (session): the server every integration test shares; which kind it is depends on
``PYPROXY_TEST_MYSQL`` / ``PYPROXY_TEST_DOCKER`` (see ``integration/servers.py``).
``controllable_db_server``: the same server, for tests that stop, kill or restart it; skipped for
an existing server, and started again after the test.
``make_proxy(**overrides)``: starts pyproxy in front of ``db_server``; all stopped at teardown.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from integration import servers


@pytest.fixture(scope="session")
def db_server() -> Iterator[servers.DbServer]:
    """The database server shared by the whole test session."""
    try:
        server = servers.open_db_server(os.environ)
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def controllable_db_server(db_server: servers.DbServer) -> Iterator[servers.DbServer]:
    """``db_server`` for fault tests; it is running again when the test ends, whatever happened."""
    if not servers.is_controllable(db_server):
        pytest.skip("an existing server (PYPROXY_TEST_MYSQL) cannot be stopped or killed")
    yield db_server
    db_server.start()


@pytest.fixture
def make_proxy(
    db_server: servers.DbServer, tmp_path: Path
) -> Iterator[Callable[..., servers.ProxyProcess]]:
    """Factory: ``make_proxy(pool={"max_connections": 20}, users=[...], args=[...])``.

    Each call writes a config (user ``app``/``app_pw``, database ``app``, plus ``users``) into
    its own folder under ``tmp_path``, starts pyproxy on a free port and waits until it listens.
    See :func:`servers.start_proxy` for the arguments.
    """
    started: list[servers.ProxyProcess] = []
    counter = itertools.count(1)

    def make(**overrides: Any) -> servers.ProxyProcess:
        proxy = servers.start_proxy(db_server, tmp_path / f"proxy-{next(counter)}", **overrides)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="module")
def module_proxies(db_server: servers.DbServer, tmp_path_factory: pytest.TempPathFactory,
                   request: pytest.FixtureRequest) -> Iterator[Any]:
    """One pyproxy shared by a driver module's tests (test_drivers_<name>.py)."""
    from integration import drivers  # noqa: PLC0415 - only the driver modules need it

    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_drivers_")
    with drivers.module_proxy(db_server, tmp_path_factory, name) as holder:
        yield holder


@pytest.fixture
def proxy(module_proxies: Any) -> servers.ProxyProcess:
    """The module's pyproxy, started again if a test stopped it."""
    return module_proxies.get()
