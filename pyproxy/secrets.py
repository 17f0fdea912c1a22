"""AWS Secrets Manager as a source of users' passwords, as RDS Proxy uses it.

Each ``[[secrets]]`` entry names a secret whose value is RDS-style JSON:
``username`` and ``password``, optionally ``engine``, ``host`` and ``port``
(read, checked, and otherwise ignored: pyproxy's backend is its own
configuration, as RDS Proxy's is).  Secrets are fetched at start, every
``[aws] secrets_refresh`` seconds, and again when a login made with them is
refused (a rotation finished early), so a rotation needs no restart.  While a
rotation is under way the secret has an ``AWSPENDING`` version besides
``AWSCURRENT``: clients may log in with either, and backend logins try the
one the client proved first, then the other.

A secret that cannot be fetched or read keeps what was last fetched of it,
and the failure is logged by ARN and kind, never by value.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from botocore.exceptions import ClientError
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime

from pyproxy.aws import RunInThread
from pyproxy.credential_sources import Credential
from pyproxy.logs import get_logger

CURRENT = "AWSCURRENT"
PENDING = "AWSPENDING"

#: On-demand fetches (after a refused login) are at most this often, so a
#: wrong password on the server or a client sending wrong passwords cannot
#: make pyproxy call Secrets Manager in a loop.
MIN_REFRESH_GAP = 5.0


class BadSecret(ValueError):
    """A secret's value is not RDS-style JSON; the message never quotes it."""


@attrs.frozen
class DatabaseSecret:
    """One version of one secret, read."""

    arn: str
    stage: str
    username: str
    password: str = attrs.field(repr=False)
    engine: str | None = None
    host: str | None = None
    port: int | None = None


def parse_secret(arn: str, stage: str, text: str) -> DatabaseSecret:
    """Reads a SecretString.

    Raises:
        BadSecret: not a JSON object with string ``username`` and ``password``,
            or an ``engine``/``host``/``port`` of the wrong kind.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        raise BadSecret("the secret is not JSON") from None
    if not isinstance(data, dict):
        raise BadSecret("the secret is not a JSON object")
    if not isinstance(data.get("username"), str) or not data["username"]:
        raise BadSecret("the secret has no string 'username'")
    if not isinstance(data.get("password"), str):
        raise BadSecret("the secret has no string 'password'")
    for key in ("engine", "host"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise BadSecret(f"the secret's {key!r} is not a string")
    port = data.get("port")
    if port is not None:
        # RDS writes the port as a number; people often write it as a string.
        if isinstance(port, str) and port.isdigit():
            port = int(port)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise BadSecret("the secret's 'port' is not a TCP port number")
    return DatabaseSecret(arn, stage, data["username"], data["password"], data.get("engine"),
                          data.get("host"), port)


def fetch_secret(client: Any, arn: str) -> list[DatabaseSecret]:
    """Both versions that matter, blocking (run it in a thread): AWSCURRENT, and
    AWSPENDING while a rotation is under way.

    Raises:
        BadSecret, botocore's ClientError or BotoCoreError.
    """
    current = client.get_secret_value(SecretId=arn, VersionStage=CURRENT)
    found = [parse_secret(arn, CURRENT, _string_of(current))]
    try:
        pending = client.get_secret_value(SecretId=arn, VersionStage=PENDING)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
            raise
    else:
        if pending.get("VersionId") != current.get("VersionId"):
            try:
                found.append(parse_secret(arn, PENDING, _string_of(pending)))
            except BadSecret:
                pass  # a rotation half-written; AWSCURRENT still stands
    return found


def _string_of(response: dict[str, Any]) -> str:
    if "SecretString" not in response:
        raise BadSecret("the secret has a binary value, not RDS-style JSON")
    return str(response["SecretString"])


@attrs.define(eq=False)
class SecretsSource:
    """The users of the ``[[secrets]]`` as a CredentialSource.

    Args:
        arns: the secrets, in configuration order (the first one naming a user wins).
        make_client: builds the boto3 Secrets Manager client (pyproxy.aws.client);
            called once, in a thread.
        run_in_thread: runs a blocking call off the reactor (pyproxy.aws.in_thread).
        clock: for the periodic refresh and the on-demand gap.
        interval: ``[aws] secrets_refresh``.
    """

    arns: Sequence[str]
    make_client: Callable[[], Any]
    run_in_thread: RunInThread[Any]
    clock: IReactorTime
    interval: float = 300.0
    name: str = "secrets"
    _client: Any = None
    _secrets: dict[str, list[DatabaseSecret]] = attrs.field(factory=dict)
    _users: dict[str, list[DatabaseSecret]] = attrs.field(factory=dict)
    _round: defer.Deferred[None] | None = None
    _waiting: list[defer.Deferred[bool]] = attrs.field(factory=list)
    _last_fetch: float | None = None
    _loop: task.LoopingCall | None = None
    _log: Any = attrs.field(factory=lambda: get_logger(component="secrets"))

    def start(self) -> defer.Deferred[bool]:
        """Fetches every secret now and then every ``interval`` seconds; fires
        (True if all were read) after the first round."""
        first = self.fetch()
        self._loop = task.LoopingCall(self.fetch)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)
        return first

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        versions = self._users.get(user)
        if not versions:
            return defer.succeed(None)
        return defer.succeed(Credential(user, self.name, passwords=tuple(
            dict.fromkeys(secret.password for secret in versions))))

    def refresh(self, user: str) -> defer.Deferred[bool]:
        """Fetches again unless the last fetch is under MIN_REFRESH_GAP seconds old;
        fires True once a fetch made for this call has read every secret."""
        if self._round is None and self._last_fetch is not None and (
                self.clock.seconds() - self._last_fetch < MIN_REFRESH_GAP):
            return defer.succeed(False)
        return self.fetch()

    def fetch(self) -> defer.Deferred[bool]:
        """One round over every secret, joined if one is under way already; fires
        True if every secret was read."""
        waiter: defer.Deferred[bool] = defer.Deferred()
        self._waiting.append(waiter)
        if self._round is None:
            self._last_fetch = self.clock.seconds()
            # Set before the callbacks, which may run at once and clear it.
            self._round = d = (defer.succeed(self._client) if self._client is not None
                               else self.run_in_thread(self.make_client))
            d.addCallbacks(self._fetch_all, lambda failure: [self._failed(failure, "")])
            d.addCallback(self._round_done)
        return waiter

    def _fetch_all(self, client: Any) -> defer.Deferred[list[bool]]:
        self._client = client
        return defer.gatherResults([
            self.run_in_thread(lambda arn=arn: fetch_secret(client, arn)).addCallbacks(
                self._fetched, self._failed, callbackArgs=(arn,), errbackArgs=(arn,))
            for arn in self.arns])

    def _fetched(self, versions: list[DatabaseSecret], arn: str) -> bool:
        self._secrets[arn] = versions
        self._log.debug("secret_fetched", arn=arn, stages=[secret.stage for secret in versions])
        return True

    def _failed(self, failure: Any, arn: str) -> bool:
        """Logs why a secret (or, with arn "", the client) could not be had: an
        AWS error code, what is wrong with the JSON, or the exception's type;
        never a message that could quote the value."""
        exc = failure.value
        if isinstance(exc, ClientError):
            kind = exc.response.get("Error", {}).get("Code", "ClientError")
        elif isinstance(exc, BadSecret):
            kind = str(exc)
        else:
            kind = type(exc).__name__
        self._log.warning("secret_fetch_failed", arn=arn or None, error=kind,
                          kept=arn in self._secrets)
        return False

    def _round_done(self, results: list[bool]) -> None:
        self._round = None
        users: dict[str, list[DatabaseSecret]] = {}
        owner: dict[str, str] = {}
        for arn in self.arns:
            for secret in self._secrets.get(arn, []):
                if owner.setdefault(secret.username, arn) != arn:
                    self._log.warning("secret_user_duplicate", arn=arn, user=secret.username,
                                      used=owner[secret.username])
                    continue
                users.setdefault(secret.username, []).append(secret)
        self._users = users
        ok = all(results)
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(ok)
