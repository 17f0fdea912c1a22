"""Fixtures for tests that need a real database server and a real pyproxy process.

``db_server`` (session): the server every integration test shares; which kind it is depends on
``PYPROXY_TEST_MYSQL`` / ``PYPROXY_TEST_DOCKER`` (see ``integration/servers.py``).
``controllable_db_server``: the same server, for tests that stop, kill or restart it; skipped for
an existing server, and started again after the test.
``make_proxy(**overrides)``: starts pyproxy in front of ``db_server``; all stopped at teardown.
``server_group``: three throwaway servers of their own (a simulated cluster for failover tests),
the first writable and the others read-only at the start of every test.
``make_group_proxy(roles, **overrides)``: starts pyproxy with ``server_group``'s servers as its
``[[backend.targets]]``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from integration import servers

Server = TypeVar("Server", servers.DbServer, servers.ServerGroup)


@pytest.fixture(scope="session", autouse=True)
def _no_proxy_left_running() -> Iterator[None]:
    """No pyproxy a test started outlives the test session."""
    yield
    servers.stop_started_proxies()


@pytest.fixture(scope="session")
def db_server() -> Iterator[servers.DbServer]:
    """The database server shared by the whole test session."""
    with _started_or_skipped(lambda: servers.open_db_server(os.environ)) as server:
        yield server


@contextlib.contextmanager
def _started_or_skipped(start: Callable[[], Server]) -> Iterator[Server]:
    """What ``start()`` returns, cleaned up on exit; the test is skipped, saying why, when
    no server can run here, and fails when the server asked for explicitly cannot."""
    try:
        server = start()
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    except servers.RequestedServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)
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

    Each call writes a config (user ``servers.APP_USER`` with its database ``APP_DATABASE``,
    both ``app_<run id>``, plus ``users``) into its own folder under ``tmp_path``, starts
    pyproxy on a free port and waits until it listens.
    See :func:`servers.start_proxy` for the arguments.
    """
    with _proxy_factory(db_server, tmp_path) as make:
        yield make


@contextlib.contextmanager
def _proxy_factory(server: Any, directory: Path) -> Iterator[Callable[..., servers.ProxyProcess]]:
    """A ``start_proxy`` in front of ``server`` per call, each in its own folder; every
    proxy started is stopped on exit."""
    started: list[servers.ProxyProcess] = []
    counter = itertools.count(1)

    def make(**overrides: Any) -> servers.ProxyProcess:
        proxy = servers.start_proxy(server, directory / f"proxy-{next(counter)}", **overrides)
        started.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in started:
            proxy.stop()


@pytest.fixture(scope="module")
def _server_group() -> Iterator[servers.ServerGroup]:
    """Started once per module that asks for it: a server start costs about a second."""
    with _started_or_skipped(lambda: servers.ServerGroup.start_sandboxes(3)) as group:
        yield group


@pytest.fixture
def server_group(_server_group: servers.ServerGroup) -> servers.ServerGroup:
    """Three sandbox servers, whatever ``db_server`` is; every one running, the first writable
    and the others read-only when the test starts (earlier tests flip and stop them)."""
    _server_group.reset()
    return _server_group


@pytest.fixture
def make_group_proxy(
    server_group: servers.ServerGroup, tmp_path: Path
) -> Iterator[Callable[..., servers.ProxyProcess]]:
    """Factory: ``make_group_proxy(["writer", "auto"], health={...}, ...)`` starts pyproxy with
    the first servers of ``server_group`` as its targets, in these roles (see
    :meth:`servers.ServerGroup.backend`); other arguments as for ``make_proxy``, a ``backend``
    table merged into the targets' one."""
    with _proxy_factory(server_group, tmp_path / "group") as make:

        def make_with_targets(roles: list[str], **overrides: Any) -> servers.ProxyProcess:
            backend = server_group.backend(roles, **overrides.pop("backend", {}))
            return make(backend=backend, **overrides)

        yield make_with_targets


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
