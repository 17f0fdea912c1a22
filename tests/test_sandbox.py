"""The pure parts of pyproxy.sandbox: config writing and command lines (no server needed)."""

from __future__ import annotations

import sys
import tomllib

from pyproxy import sandbox


def test_dump_toml_round_trips() -> None:
    """The config writer produces TOML that tomllib reads back unchanged, escapes included."""
    data = {
        "proxy": {"listen": "tcp:6033:interface=127.0.0.1"},
        "backend": {"host": "127.0.0.1", "port": 3306, "connect_timeout": 1.5},
        "log": {"level": "info", "tags": ["a", "b"], "json": True},
        "users": [
            {"name": "app", "password": 'q"uo\\te\n\x01\x7fé'},
            {"name": "b", "password": ""},
        ],
        "weird key": {"nested": {"x": 1}},
    }
    assert tomllib.loads(sandbox.dump_toml(data)) == data


def test_dump_toml_leaves_out_none() -> None:
    """TOML has no null, so None values are omitted rather than written wrongly."""
    assert tomllib.loads(sandbox.dump_toml({"backend": {"database": None, "port": 1}})) == {
        "backend": {"port": 1}
    }


def test_twistd_command_uses_this_interpreter() -> None:
    """pyproxy runs under the same Python, runner options before the plugin name."""
    assert sandbox.twistd_command("/x.toml", ["--log-level=debug"], ["--flag"]) == [
        sys.executable, "-c", sandbox.TWISTD, "--nodaemon", "--pidfile=", "--log-level=debug",
        "pyproxy", "--config", "/x.toml", "--flag",
    ]


def test_endpoint_address() -> None:
    """Only tcp endpoints give an address to print or to wait for."""
    assert sandbox.endpoint_address("tcp:6033:interface=10.0.0.1") == ("10.0.0.1", "6033")
    assert sandbox.endpoint_address("tcp:6033") == ("127.0.0.1", "6033")
    assert sandbox.endpoint_address("tcp:6033:interface=0.0.0.0") == ("127.0.0.1", "6033")
    assert sandbox.endpoint_address("unix:/tmp/p.sock") is None
