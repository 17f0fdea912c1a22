"""pyproxy.logs: one format per stream (Twisted's events included), and no secret in it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.python.reflect import namedAny

from pyproxy import config as configuration
from pyproxy import logs, tap

SECRET = "correct-horse-battery"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logs.configure("info", "json", out, secrets=[SECRET, "pw"])
    yield out
    structlog.reset_defaults()


def events(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("name", ["password", "health_password", "password_hash", "api_key", "KEY",
                                  "aws_credentials", "api_token", "client_secret", "db_pwd", "salt"])
def test_secret_names(name: str) -> None:
    assert logs.names_a_secret(name)


@pytest.mark.parametrize("name", ["backend_id", "reason", "monkey", "hashed_rows", "keyboard",
                                  "target", "setting", "user", "peer"])
def test_ordinary_names(name: str) -> None:
    assert not logs.names_a_secret(name)


def test_fields_naming_or_holding_a_secret_are_dropped(stream: io.StringIO) -> None:
    """By name whatever the value; by value (a configured secret, also inside a list,
    a table or a long message) whatever the name; the event text is masked, not dropped."""
    log = logs.get_logger(client_id=7, password_hash="abc")
    log.info("login", user="app", token=None, api_key=3, note=SECRET, items=["x", SECRET],
             table={"password": "y"}, error=f"server said: bad value '{SECRET}'",
             short="pw", quoting_short="opw2", reason="ok")
    log.info(f"event text with {SECRET}")
    first, second = events(stream)
    assert first["event"] == "login"
    assert {k: v for k, v in first.items() if k != "timestamp"} == {
        "event": "login", "level": "info", "client_id": 7, "user": "app", "quoting_short": "opw2",
        "reason": "ok"}
    assert second["event"] == logs.REDACTED
    assert SECRET not in stream.getvalue()


def test_configured_secrets_are_what_the_config_holds() -> None:
    """Every password of the configuration, users' and the probe account's."""
    config = configuration.build({"health": {"user": "mon", "password": "mon-pw"},
                                  "users": [{"name": "app", "password": "app-pw"}, {"name": "nopw"}]})
    assert configuration.secrets(config) == {"mon-pw", "app-pw"}


def test_auto_format_follows_the_terminal() -> None:
    """JSON lines when not on a terminal, readable key=value text on one."""
    piped, terminal = io.StringIO(), Terminal()
    try:
        logs.configure("info", "auto", piped)
        logs.get_logger().info("listening", port=3306)
        logs.configure("info", "auto", terminal)
        logs.get_logger().info("listening", port=3306)
    finally:
        structlog.reset_defaults()
    assert json.loads(piped.getvalue())["port"] == 3306
    text = terminal.getvalue()
    assert "listening" in text and "port=3306" in text and not text.startswith("{")


def test_twisted_events_are_rendered_like_pyproxy_events(stream: io.StringIO) -> None:
    """twistd's lines come out as the same JSON, at their level, marked logger=twisted;
    a failure carries its traceback; debug lines stay out at level info; secrets go."""
    observer = logs.twisted_observer()
    observer({"log_format": "twistd {version} starting up.", "version": "24.10.0",
              "log_level": LogLevel.info, "log_namespace": "twisted.scripts._twistd_unix.UnixAppLogger",
              "log_system": "-"})
    observer({"log_format": "noise", "log_level": LogLevel.debug})
    observer({"log_format": "Received SIGTERM, shutting down.", "log_level": LogLevel.warn,
              "log_system": "-"})
    try:
        1 / 0
    except ZeroDivisionError:
        failure = Failure()
    observer({"log_format": "Unhandled Error", "log_level": LogLevel.critical, "log_failure": failure,
              "log_system": "pyproxy.frontend.FrontendFactory"})
    observer({"log_format": "{text}", "text": f"printed {SECRET}", "log_level": LogLevel.info})
    started, stopping, error, printed = events(stream)
    assert (started["event"], started["level"], started["logger"]) == (
        "twistd 24.10.0 starting up.", "info", "twisted")
    assert "system" not in started and "timestamp" in started
    assert (stopping["level"], error["level"]) == ("warning", "critical")
    assert "ZeroDivisionError" in error["exception"] and "Traceback" in error["exception"]
    assert error["system"] == "pyproxy.frontend.FrontendFactory"
    assert printed["event"] == logs.REDACTED


class Runner(dict):
    """twistd's options as the plugin's options see them (their ``parent``)."""


@pytest.mark.parametrize(("given", "expected"), [
    ({}, logs.twisted_observer),
    ({"logfile": "/var/log/pyproxy.log"}, None),
    ({"logger": "some.other.observer"}, "some.other.observer"),
    ({"syslog": True}, None),
    ({"nodaemon": False}, None),
])
def test_twistd_is_told_to_log_through_pyproxy(given: dict[str, Any], expected: Any) -> None:
    """In the foreground, unless twistd was told where to log, it takes pyproxy's
    observer (by name, which twistd's own option check then imports); a daemon keeps
    its twistd.log."""
    options = tap.Options()
    options.parent = Runner({"nodaemon": True, "logger": None, "logfile": None, "syslog": False,
                             **given})
    options._log_twisted_events()
    chosen = options.parent["logger"]
    if expected is logs.twisted_observer:
        assert namedAny(chosen) is logs.twisted_observer
    else:
        assert chosen == expected
