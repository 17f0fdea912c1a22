"""The backend checked before the reactor runs: pyproxy logs in as every account it
will use, so that a wrong password, a missing grant or an unreachable server
stops start-up with one line instead of failing every client later.

The logins run the very code pooled connections use (BackendConnection, with
every auth plugin, TLS, the schema and init_query) over a blocking socket.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from pyproxy import config as configuration
from pyproxy.backend import BackendConnection, BackendError, Target
from pyproxy.credential_sources import BackendLogin
from pyproxy.proxy import ServerInfo, probe_account
from pyproxy.tls import BackendTLSCache
from pyproxy.wire.constants import COMMAND, CR_SERVER_LOST, CR_SSL_CONNECTION_ERROR
from pyproxy.wire.framing import PacketFramer, frame
from pyproxy.wire.handshake import HandshakeV10, parse_handshake_v10


class StartupError(Exception):
    """Something that keeps pyproxy from starting; its message is the one line shown."""


class LoginRefused(StartupError):
    """The server answers but refuses one of pyproxy's accounts: the configuration
    is wrong, and another server would not make it right."""


def probe_backend(config: configuration.Config) -> ServerInfo:
    """Logs in to the first target that answers (writers and auto targets first)
    as every configured user and as the probe account, so that a wrong
    password or a missing grant stops start-up with one line instead of
    failing every client later (the probes would only say
    ``probe_inconclusive``).  Its greeting tells how to greet clients."""
    servers = sorted(config.backend.servers(), key=lambda server: server.role == "reader")
    problems = []
    for server in servers:
        try:
            greeting = None
            for account, target in _startup_logins(config, server):
                greeting = _login(target, account)
            if greeting is None:  # every user has only a hash: the greeting alone
                greeting = _greeting(server, config.backend.connect_timeout)
            return ServerInfo(greeting.server_version, greeting.capabilities, greeting.charset,
                              greeting.status)
        except LoginRefused:
            raise
        except StartupError as exc:
            problems.append(str(exc))
    raise StartupError("; ".join(problems))


def _startup_logins(config: configuration.Config,
                    server: configuration.TargetConfig) -> list[tuple[str, Target]]:
    """The logins pyproxy will make to ``server``: each user's pooled ones (with
    the default schema and init_query), then the probes' when [health] names
    an account of its own.  With ``[backend] iam`` they log in as they will
    then: the users with their RDS tokens, the probe account with one when it
    has no password (see pyproxy.proxy.probe_account).

    Raises:
        StartupError: an RDS token cannot be made (no AWS credentials).
    """
    backend = config.backend
    # A user with only a password_hash is checked when its first client logs
    # in: only that client's proof gives what logs in to the server.
    tls = BackendTLSCache(backend.tls, backend.ca, backend.server_name).for_host(server.host)
    tokens = _startup_tokens(config, server) if backend.iam else None

    def login(name: str, password: str, database: str | None, timeout: float, init_query: str = "") -> Target:
        target = Target(server.host, server.port, name, password, database, backend.charset, timeout,
                        statement_cache=0, init_query=init_query, tls=tls)
        if tokens is None or password:
            return target
        return attrs.evolve(target, login=BackendLogin(name, iam=True), token=tokens(name))

    logins = [(f"user {user.name!r}", login(user.name, "" if backend.iam else user.password, backend.database,
                                            backend.connect_timeout, backend.init_query))
              for user in config.users if not user.password_hash]
    if config.auth.lookup:
        logins.append((f"[auth] lookup_user {config.auth.lookup_user!r}",
                       Target(server.host, server.port, config.auth.lookup_user, config.auth.lookup_password,
                              None, backend.charset, backend.connect_timeout, statement_cache=0, tls=tls)))
    if config.health.user:
        name, password = probe_account(config)
        logins.append((f"[health] user {name!r}", login(name, password, None, config.health.connect_timeout)))
    return logins


def _startup_tokens(config: configuration.Config, server: configuration.TargetConfig) -> Any:
    """``[backend] iam`` before the reactor runs: RDS tokens for ``server``, made the
    way the running proxy makes them (pyproxy.iam.RdsTokens), in this thread."""
    from pyproxy import aws, iam  # noqa: PLC0415 - boto3 only with [backend] iam

    tokens = iam.RdsTokens(lambda: aws.client("rds", config.aws), server.host, server.port, aws.synchronously,
                           Clock(), region=config.aws.region or None)

    def token(user: str) -> str:
        made: list[Any] = []
        tokens.token(user).addBoth(made.append)
        if isinstance(made[0], Failure):
            raise StartupError(f"cannot make an RDS IAM token for {user!r} on backend {server.host}:"
                               f"{server.port} ([backend] iam): {type(made[0].value).__name__}")
        return str(made[0])

    return token


class _RawSocket:
    """The blocking socket under Twisted's TLS protocol at start-up: what it
    writes is sent as it is; closing it ends the TLS protocol."""

    def __init__(self, owner: _BlockingTransport) -> None:
        self.owner = owner

    def write(self, data: bytes) -> None:
        self.owner.sock.sendall(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.owner.sock.sendall(b"".join(data))

    def loseConnection(self) -> None:
        """The TLS protocol is done with the socket (a failed handshake, a close):
        it learns so once its own call has returned (see _BlockingTransport.feed)."""
        self.owner.closing = True

    abortConnection = loseConnection

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """Nothing to pace: the start-up check writes a few packets."""

    def unregisterProducer(self) -> None:
        """See registerProducer."""

    def getPeer(self) -> Any:
        return None

    getHost = getPeer


class _BlockingTransport:
    """Lets a BackendConnection run over a blocking socket before the reactor runs,
    so that the start-up check logs in with the very code pooled connections use
    (every auth plugin, TLS, the schema, session tracking, init_query)."""

    def __init__(self, sock: socket.socket, protocol: BackendConnection) -> None:
        self.sock = sock
        self.protocol = protocol
        # Twisted's TLS protocol once the connection starts TLS: it gets what the
        # socket receives, and the connection's writes.
        self.tls: Any = None
        # What the socket receives goes here.
        self.receiver: Any = protocol
        # The TLS protocol closed the socket.
        self.closing = False

    def write(self, data: bytes) -> None:
        if self.tls is not None:
            self.tls.write(data)
        else:
            self.sock.sendall(data)

    def startTLS(self, options: Any) -> None:
        """TLS as a client, as a reactor's transport would start it, through
        Twisted's own TLS protocol (the same verification as pooled connections)."""
        factory = TLSMemoryBIOFactory(options, True, None)
        # The plain protocol: the factory's own batches small writes on the
        # reactor's clock, which does not run yet.
        self.tls = self.receiver = TLSMemoryBIOProtocol(factory, self.protocol, False)
        self.tls.makeConnection(_RawSocket(self))

    def feed(self, data: bytes) -> None:
        """What the socket received, to the connection (through TLS, once started)."""
        self.receiver.dataReceived(data)
        if self.closing and self.tls is not None:
            tls, self.tls = self.tls, None
            tls.connectionLost(Failure(ConnectionDone()))

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, enabled)

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, enabled)

    def loseConnection(self) -> None:
        """The caller closes the socket once the login has an outcome."""

    abortConnection = loseConnection


def _login(target: Target, account: str) -> HandshakeV10:
    """Logs in as ``target`` says, within its connect_timeout, and quits; returns
    the server's greeting.

    Raises:
        LoginRefused: the server refused this account (wrong password, no such
            user or schema, a failing init_query).
        StartupError: the server cannot be reached or is not a MySQL server.
    """
    where = f"backend {target.host}:{target.port}"
    deadline = time.monotonic() + target.connect_timeout
    outcome: list[Any] = []
    conn = BackendConnection(target, 0, Clock())
    conn.ready.addBoth(outcome.append)
    try:
        with socket.create_connection((target.host, target.port), timeout=target.connect_timeout) as sock:
            transport = _BlockingTransport(sock, conn)
            conn.makeConnection(transport)  # type: ignore[arg-type]
            while not outcome:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    raise StartupError(f"{where} closed the connection "
                                       + ("before greeting" if conn.handshake is None else "during login"))
                transport.feed(data)
            if not isinstance(outcome[0], Failure):
                transport.write(frame(bytes((COMMAND.COM_QUIT,)), 0))
    except TimeoutError:
        raise StartupError(f"{where} did not complete a login within {target.connect_timeout:g}s") from None
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise StartupError(f"cannot reach {where}: {reason}") from None
    if isinstance(outcome[0], Failure):
        error = outcome[0].value
        if conn.handshake is None:
            if isinstance(error, BackendError) and error.code != CR_SERVER_LOST[0]:
                raise StartupError(f"{where} refused: ({error.code}) {error.message}")
            raise StartupError(f"{where} is not a MySQL server: {outcome[0].getErrorMessage()}")
        if isinstance(error, BackendError) and error.code == CR_SSL_CONNECTION_ERROR[0]:
            raise StartupError(f"{where}: {error.message}")
        raise LoginRefused(f"{where} refused the login of {account}: {outcome[0].getErrorMessage()}")
    assert conn.handshake is not None
    return conn.handshake


def _greeting(server: configuration.TargetConfig, timeout: float) -> HandshakeV10:
    """The server's greeting, when no configured account can log in yet (users
    with only a password_hash).

    Raises:
        StartupError: the server cannot be reached or sends no greeting.
    """
    where = f"backend {server.host}:{server.port}"
    framer = PacketFramer()
    try:
        with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
            while True:
                data = sock.recv(65536)
                if not data:
                    raise StartupError(f"{where} closed the connection before greeting")
                packets = framer.feed(data)
                if packets:
                    return parse_handshake_v10(packets[0].payload)
    except (OSError, ValueError) as exc:
        raise StartupError(f"cannot read the greeting of {where}: {exc}") from None
