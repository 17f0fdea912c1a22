"""The running proxy's credential sources, built from its configuration.

pyproxy.credential_sources defines the interface and the chain; this module
puts together the one a running pyproxy uses, in README's order:
``[[users]]`` (a password or its stored hash), ``[[secrets]]`` (AWS Secrets
Manager, fetched in the reactor's thread pool), ``[auth] lookup`` (the
server's own ``mysql.user``, over a connection of pyproxy's own to the
current writer), and IAM tokens for the users ``[[iam.roles]]`` name.  It
also holds the RDS token makers of ``[backend] iam``.

What needs AWS or a server is only built when the configuration asks for
it, so a plain ``[[users]]`` setup imports no boto3 code path at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer

from pyproxy.backend import Target
from pyproxy.config import Config
from pyproxy.credential_sources import ConfigSource, CredentialSource, Credentials
from pyproxy.logs import get_logger


@attrs.define(eq=False)
class Authentication:
    """The chain (``credentials``) and what runs behind it.

    Args:
        config: the running configuration.
        reactor: for timers, connections and the thread pool.
        writer: where the lookup connection logs in (the current writer's
            TargetConfig), asked at each connection it opens.
    """

    config: Config
    reactor: Any
    writer: Callable[[], Any]
    credentials: Credentials = attrs.field(init=False)
    config_source: ConfigSource = attrs.field(init=False)
    secrets: Any = attrs.field(default=None, init=False)
    lookup_query: Any = attrs.field(default=None, init=False)
    _rds_tokens: dict[tuple[str, int], Any] = attrs.field(factory=dict, init=False)
    _log: Any = attrs.field(factory=lambda: get_logger(component="auth"), init=False)

    def __attrs_post_init__(self) -> None:
        config = self.config
        self.config_source = ConfigSource(config.users)
        sources: list[CredentialSource] = [self.config_source]
        if config.secrets:
            from pyproxy import aws  # noqa: PLC0415 - boto3 only when secrets are configured
            from pyproxy.secrets import SecretsSource  # noqa: PLC0415

            self.secrets = SecretsSource([secret.arn for secret in config.secrets],
                                         lambda: aws.client("secretsmanager", self.config.aws),
                                         aws.in_thread(self.reactor), self.reactor,
                                         interval=config.aws.secrets_refresh)
            sources.append(self.secrets)
        if config.auth.lookup:
            from pyproxy.lookup import LookupSource, ServerQuery  # noqa: PLC0415

            self.lookup_query = ServerQuery(self.reactor, self._lookup_target)
            sources.append(LookupSource(self.lookup_query, self.reactor, ttl=config.auth.lookup_cache))
        verifier = None
        if config.iam.roles:
            from pyproxy import aws, iam  # noqa: PLC0415

            verifier = iam.TokenVerifier(config.iam.roles, iam.botocore_sender(aws.in_thread(self.reactor)),
                                         self.reactor, audience=config.iam.audience,
                                         endpoints=config.iam.sts_endpoints)
        self.credentials = Credentials(sources, iam=verifier, backend_iam=config.backend.iam)

    def _lookup_target(self) -> Target:
        """The lookup account on the current writer, with no schema."""
        server = self.writer()
        auth, backend = self.config.auth, self.config.backend
        return Target(server.host, server.port, auth.lookup_user, auth.lookup_password, None,
                      backend.charset, backend.connect_timeout, statement_cache=0)

    def start(self) -> None:
        """Fetches the secrets now and then every ``[aws] secrets_refresh``."""
        if self.secrets is not None:
            self.secrets.start()

    def stop(self) -> None:
        if self.secrets is not None:
            self.secrets.stop()
        if self.lookup_query is not None:
            self.lookup_query.close()

    def reconfigure(self, config: Config) -> None:
        """A reload: ``[[users]]`` apply to the next login (the other sources keep
        their settings until a restart)."""
        self.config = config
        self.config_source.users = config.users

    def rds_token(self, host: str, port: int, user: str) -> defer.Deferred[str]:
        """``[backend] iam``: the current RDS token for ``user`` on ``host:port``,
        made again two minutes before its 15 minutes run out."""
        tokens = self._rds_tokens.get((host, port))
        if tokens is None:
            from pyproxy import aws, iam  # noqa: PLC0415

            tokens = self._rds_tokens[(host, port)] = iam.RdsTokens(
                lambda: aws.client("rds", self.config.aws), host, port, aws.in_thread(self.reactor),
                self.reactor, region=self.config.aws.region or None)
        return tokens.token(user)

    def backend_refused(self, user: str) -> defer.Deferred[None]:
        """The server refused a login made for ``user``: sources that can look
        again (Secrets Manager, the lookup) do, within their own limits."""
        self._log.info("backend_login_refused", user=user)
        return self.credentials.backend_refused(user)
