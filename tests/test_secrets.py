"""pyproxy.secrets: RDS-style secrets read, refreshed on a clock, rotations accepted.

A fake Secrets Manager client stands in for boto3 here, run synchronously;
integration/test_aws.py runs the same source against a moto server.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from structlog.testing import capture_logs
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import auth
from pyproxy.aws import synchronously
from pyproxy.credential_sources import Credentials
from pyproxy.secrets import (
    CURRENT,
    MIN_REFRESH_GAP,
    PENDING,
    BadSecret,
    DatabaseSecret,
    SecretsSource,
    parse_secret,
)

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf"
ARN2 = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:other-GhIjKl"


def result(d: defer.Deferred[Any]) -> Any:
    return SynchronousTestCase().successResultOf(d)


def rds(username: str, password: str, **extra: Any) -> str:
    return json.dumps({"username": username, "password": password, **extra})


def not_found(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ResourceNotFoundException", "Message": "none"}}, operation)


@attrs.define
class FakeSecretsManager:
    """get_secret_value over {arn: {stage: (version id, SecretString)}}."""

    secrets: dict[str, dict[str, tuple[str, str]]]
    calls: int = 0
    failing: Exception | None = None

    def get_secret_value(self, SecretId: str, VersionStage: str) -> dict[str, Any]:
        self.calls += 1
        if self.failing is not None:
            raise self.failing
        versions = self.secrets.get(SecretId, {})
        if VersionStage not in versions:
            raise not_found("GetSecretValue")
        version, text = versions[VersionStage]
        return {"ARN": SecretId, "VersionId": version, "SecretString": text}


def make_source(manager: FakeSecretsManager, arns: tuple[str, ...] = (ARN,)) -> tuple[SecretsSource, Clock]:
    clock = Clock()
    return SecretsSource(arns, lambda: manager, synchronously, clock, interval=300), clock


def passwords(source: SecretsSource, user: str) -> tuple[str, ...] | None:
    found = result(source.credential(user))
    return None if found is None else found.passwords


def test_parse_rds_secret() -> None:
    """username and password are required; engine, host and port are read (a port written as a
    string too); the password never shows in the repr."""
    secret = parse_secret(ARN, CURRENT, rds("app", "pw1", engine="mysql", host="db", port="3306"))
    assert secret == DatabaseSecret(ARN, CURRENT, "app", "pw1", "mysql", "db", 3306)
    assert "pw1" not in repr(secret)
    assert parse_secret(ARN, CURRENT, rds("app", "", port=3307)).port == 3307


@pytest.mark.parametrize(("text", "message"), [
    ("hunter2", "not JSON"),
    ('["hunter2"]', "not a JSON object"),
    (json.dumps({"password": "hunter2"}), "no string 'username'"),
    (json.dumps({"username": "", "password": "hunter2"}), "no string 'username'"),
    (json.dumps({"username": "app"}), "no string 'password'"),
    (json.dumps({"username": "app", "password": 12345}), "no string 'password'"),
    (rds("app", "hunter2", port=0), "'port' is not a TCP port"),
    (rds("app", "hunter2", port="x3306"), "'port' is not a TCP port"),
    (rds("app", "hunter2", port=True), "'port' is not a TCP port"),
    (rds("app", "hunter2", host=["h"]), "'host' is not a string"),
])
def test_bad_secrets_are_refused_without_quoting_them(text: str, message: str) -> None:
    """Each malformed secret gives one reason that names the problem, never the value."""
    with pytest.raises(BadSecret) as info:
        parse_secret(ARN, CURRENT, text)
    assert message in str(info.value)
    assert "hunter2" not in str(info.value) and "12345" not in str(info.value)


def test_fetched_at_start_and_every_interval() -> None:
    """start() fetches at once; the clock's interval fetches again, so a changed secret is seen
    without a restart."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "pw1"))}})
    source, clock = make_source(manager)
    assert result(source.start()) is True
    assert passwords(source, "app") == ("pw1",)
    assert passwords(source, "ghost") is None
    manager.secrets[ARN][CURRENT] = ("v2", rds("app", "pw2"))
    clock.advance(299)
    assert passwords(source, "app") == ("pw1",)
    clock.advance(1)
    assert passwords(source, "app") == ("pw2",)
    source.stop()


def test_rotation_accepts_current_and_pending() -> None:
    """While AWSPENDING exists both passwords are accepted from clients, AWSCURRENT first; a
    client with either is let in, and the backend tries the one it proved first."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "old")), PENDING: ("v2", rds("app", "new"))}})
    source, _ = make_source(manager)
    result(source.start())
    assert passwords(source, "app") == ("old", "new")
    credentials = Credentials([source])
    app = result(credentials.credential("app"))
    nonce = auth.new_nonce()
    for password, order in ((b"old", ("old", "new")), (b"new", ("new", "old"))):
        verdict = result(credentials.verify(app, auth.NATIVE, nonce, auth.native_proof(password, nonce),
                                            secure=False))
        assert verdict.login is not None and verdict.login.passwords == order


def test_pending_same_version_or_unreadable_is_left_out() -> None:
    """AWSPENDING on the AWSCURRENT version adds nothing; a pending version that is not RDS JSON
    (a rotation half-written) leaves the current one standing."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "pw")), PENDING: ("v1", rds("app", "pw"))}})
    source, _ = make_source(manager)
    result(source.start())
    assert passwords(source, "app") == ("pw",)
    manager.secrets[ARN][PENDING] = ("v2", "{not json")
    result(source.fetch())
    assert passwords(source, "app") == ("pw",)


def test_alternating_users_rotation_gives_two_users() -> None:
    """A rotation that alternates users (app, app_clone) gives each user its own password."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "a")), PENDING: ("v2", rds("app_clone", "b"))}})
    source, _ = make_source(manager)
    result(source.start())
    assert passwords(source, "app") == ("a",) and passwords(source, "app_clone") == ("b",)


def test_failures_keep_what_was_fetched_and_log_no_secret() -> None:
    """AWS unreachable, access denied or a secret turned bad: the last good values stay, and the
    log line names the ARN and the kind of failure, never a value."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "hunter2"))}})
    source, _ = make_source(manager)
    result(source.start())
    with capture_logs() as logs:
        manager.failing = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
        assert result(source.fetch()) is False
        manager.failing = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "Get")
        assert result(source.fetch()) is False
        manager.failing = None
        manager.secrets[ARN][CURRENT] = ("v2", '{"username": "app", "password": 7}')
        assert result(source.fetch()) is False
    assert passwords(source, "app") == ("hunter2",)
    assert [(log["event"], log["error"], log["kept"]) for log in logs] == [
        ("secret_fetch_failed", "EndpointConnectionError", True),
        ("secret_fetch_failed", "AccessDeniedException", True),
        ("secret_fetch_failed", "the secret has no string 'password'", True),
    ]
    assert all(log["arn"] == ARN for log in logs)
    assert "hunter2" not in repr(logs)


def test_a_missing_secret_at_start_knows_no_user() -> None:
    """A secret that cannot be read at start gives no user, and says so."""
    source, _ = make_source(FakeSecretsManager({}))
    with capture_logs() as logs:
        assert result(source.start()) is False
    assert passwords(source, "app") is None
    assert logs[0]["error"] == "ResourceNotFoundException"


def test_on_demand_refresh_is_coalesced_and_spaced() -> None:
    """refresh() after a refused login fetches again, once however many ask at the same time,
    and not again within MIN_REFRESH_GAP seconds."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "pw1"))}})
    gate: list[defer.Deferred[Any]] = []

    def held(call: Any) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        gate.append(d)
        return d.addCallback(lambda _: call())

    clock = Clock()
    source = SecretsSource((ARN,), lambda: manager, held, clock)
    started = source.start()
    while gate:
        gate.pop(0).callback(None)
    assert result(started) is True
    assert result(source.refresh("app")) is False  # fetched just now
    clock.advance(MIN_REFRESH_GAP)
    manager.secrets[ARN][CURRENT] = ("v2", rds("app", "pw2"))
    first, second = source.refresh("app"), source.refresh("app")
    assert len(gate) == 1
    gate.pop().callback(None)
    assert result(first) is True and result(second) is True
    assert passwords(source, "app") == ("pw2",)
    assert manager.calls == 4  # AWSCURRENT and AWSPENDING, twice


def test_first_secret_naming_a_user_wins() -> None:
    """Two secrets for one user: the first in the configuration is used, the other logged."""
    manager = FakeSecretsManager({ARN: {CURRENT: ("v1", rds("app", "first"))},
                                  ARN2: {CURRENT: ("v1", rds("app", "second"))}})
    source, _ = make_source(manager, (ARN, ARN2))
    with capture_logs() as logs:
        result(source.start())
    assert passwords(source, "app") == ("first",)
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == ["secret_user_duplicate"]
