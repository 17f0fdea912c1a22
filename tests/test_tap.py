"""pyproxy.tap: what a failed reload logs, and what SIGUSR1 reports about clients."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
import structlog
from twisted.internet.task import Clock

from pyproxy import config as configuration
from pyproxy import logs
from pyproxy.proxy import ServerInfo
from pyproxy.tap import ProxyService

GOOD = '[health]\nuser = "monitor"\npassword = "monitor-pw"\n\n[[users]]\nname = "app"\npassword = "app-pw"\n'

#: Bad secrets of every TOML type, and text that must then appear nowhere.
BAD_SECRETS = [
    ("918273645", ["918273645"]),
    ("6.02214076", ["6.02214076"]),
    ("true", ["true", "True"]),
    ('["hunter2-list"]', ["hunter2"]),
    ('{ inner = "hunter2-table" }', ["hunter2"]),
    ("1979-05-27T07:32:00", ["1979"]),
]


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """pyproxy's JSON log lines, captured."""
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    yield stream
    structlog.reset_defaults()


def service(path: Path) -> ProxyService:
    return ProxyService(configuration.load(str(path), {}), ServerInfo("10.11.0", 0xFFFFFFFF, 45, 2),
                        reactor=Clock(), reload=lambda: configuration.load(str(path), {}))


@pytest.mark.parametrize(("value", "needles"), BAD_SECRETS)
@pytest.mark.parametrize("where", ["users", "health"])
def test_reload_failed_never_logs_a_secret(tmp_path: Path, log_stream: io.StringIO, where: str,
                                           value: str, needles: list[str]) -> None:
    """A password of the wrong type is refused, by key, in the error and in the
    ``reload_failed`` line, without its value, whatever its type."""
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD)
    running = service(path)
    bad = GOOD.replace('password = "app-pw"' if where == "users" else 'password = "monitor-pw"',
                       f"password = {value}")
    path.write_text(bad)
    with pytest.raises(configuration.ConfigError) as info:
        configuration.load(str(path), {})
    running.reload()
    failed = [json.loads(line) for line in log_stream.getvalue().splitlines()
              if '"reload_failed"' in line]
    assert len(failed) == 1, log_stream.getvalue()
    key = "users[0].password" if where == "users" else "health.password"
    assert key in str(info.value) and key in failed[0]["error"]
    # Every field but the time, whose microseconds may hold any four digits.
    logged = [{k: v for k, v in json.loads(line).items() if k != "timestamp"}
              for line in log_stream.getvalue().splitlines()]
    for needle in needles:
        assert needle not in str(info.value)
        assert needle not in json.dumps(logged)
    assert running.config.user("app").password == "app-pw"  # the running config stays


def test_sigusr1_reports_client_counts(tmp_path: Path, log_stream: io.StringIO) -> None:
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD)
    running = service(path)
    proxy = running.proxy
    proxy.connections_accepted = 3
    log = logs.get_logger(client_id=1)
    proxy.client_closed(log, "COM_QUIT")
    proxy.client_closed(log, "Access denied for user 'app'@'10.0.0.7' (using password: YES)")
    proxy.client_closed(log, "Access denied for user 'other'@'10.0.0.8' (using password: NO)")
    running.log_stats()
    events = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    closed = [e for e in events if e["event"] == "client_closed"]
    assert [e["level"] for e in closed] == ["debug"] * 3
    stats = [e for e in events if e["event"] == "client_stats"]
    assert len(stats) == 1 and stats[0]["level"] == "info"
    assert (stats[0]["accepted"], stats[0]["open"]) == (3, 0)
    assert stats[0]["closed"] == {"COM_QUIT": 1, "Access denied for user": 2}


def test_file_limit_raised_towards_what_clients_need(monkeypatch: pytest.MonkeyPatch) -> None:
    """At start the soft RLIMIT_NOFILE goes up to what max_client_connections and the pools
    need, within the hard limit; a hard limit below that is a warning."""
    import resource

    from pyproxy.config import build
    from pyproxy.tap import FILE_MARGIN, raise_file_limit

    limits = {"value": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["value"])
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: limits.update(value=value))
    warnings: list[dict[str, object]] = []

    class Log:
        def warning(self, event: str, **fields: object) -> None:
            warnings.append({"event": event, **fields})

    small = build({"proxy": {"max_client_connections": 1000}, "pool": {"max_connections": 10},
                   "users": [{"name": "app", "password": "pw"}]})
    assert raise_file_limit(small, Log()) == 1000 + 10 + FILE_MARGIN and warnings == []
    limits["value"] = (1024, 4096)
    big = build({"users": [{"name": "app", "password": "pw"}]})
    assert raise_file_limit(big, Log()) == 4096
    assert warnings and warnings[0]["event"] == "file_limit_low" and warnings[0]["limit"] == 4096


def test_startup_logins_with_backend_iam(monkeypatch: pytest.MonkeyPatch) -> None:
    """[backend] iam: the start-up check logs in as the running proxy will, each user with its
    RDS token (never the password its clients use), and a [health] user without a password
    with its own; a token that cannot be made stops start-up naming the kind of error only."""
    from pyproxy import aws, startup_probe  # noqa: PLC0415

    class Rds:
        def generate_db_auth_token(self, DBHostname: str, Port: int, DBUsername: str,  # noqa: N803
                                   Region: str | None = None) -> str:
            return f"{DBHostname}:{Port}/?Action=connect&DBUser={DBUsername}&X-Amz-Signature=s"

    monkeypatch.setattr(aws, "client", lambda service, config: Rds())
    config = configuration.build({"backend": {"iam": True, "tls": "verify", "host": "db.internal"},
                                  "users": [{"name": "app", "password": "clients-pw"}],
                                  "health": {"user": "monitor"}})
    server = config.backend.servers()[0]
    logins = startup_probe._startup_logins(config, server)
    assert [(account, target.user, target.password, target.login.iam, target.token) for account, target in logins] == [
        ("user 'app'", "app", "", True, "db.internal:3306/?Action=connect&DBUser=app&X-Amz-Signature=s"),
        ("[health] user 'monitor'", "monitor", "", True,
         "db.internal:3306/?Action=connect&DBUser=monitor&X-Amz-Signature=s")]
    with_password = attrs.evolve(config, health=attrs.evolve(config.health, password="mon-pw"))
    [_, (_, probe)] = startup_probe._startup_logins(with_password, server)
    assert (probe.password, probe.login, probe.token) == ("mon-pw", None, "")

    class NoCredentials:
        def generate_db_auth_token(self, **kwargs: object) -> str:
            raise RuntimeError("Unable to locate credentials AKIASECRET")

    monkeypatch.setattr(aws, "client", lambda service, config: NoCredentials())
    with pytest.raises(startup_probe.StartupError) as refused:
        startup_probe._startup_logins(config, server)
    assert str(refused.value) == ("cannot make an RDS IAM token for 'app' on backend db.internal:3306 "
                                  "([backend] iam): RuntimeError")
