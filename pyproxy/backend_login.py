"""A backend connection's login: the capabilities it asks for, TLS, and the answer to each
authentication plugin the server may ask for.

Apart from the rest of BackendConnection (pyproxy.backend), which inherits it, because
the login runs once per connection and has its own concern: what the server is told and
proven, from the target's password or from what a client's login gave.  It ends by
handing over to the session set-up (``_start_tracking``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pyproxy import auth
from pyproxy.backend_error import BackendError
from pyproxy.session import SessionState, initial_state
from pyproxy.wire import constants as c
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import frame
from pyproxy.wire.handshake import (
    HandshakeResponse41,
    HandshakeV10,
    make_handshake_response41,
    make_ssl_request,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from pyproxy.wire.response_tracker import ResponseTracker
from pyproxy.wire.responses import parse_err, parse_ok

if TYPE_CHECKING:
    from pyproxy.target import Target

# Capability bits a backend connection takes from the client it will serve,
# because they change what the server does (affected-row counts, parsing,
# whether a CALL's OUT parameters come back to COM_STMT_EXECUTE, MariaDB's
# extended type information in column definitions) and cannot be translated
# packet by packet.  Connections are pooled per combination; most
# applications use one.
FLAVOR_BITS = (CLIENT.FOUND_ROWS | CLIENT.IGNORE_SPACE | CLIENT.PS_MULTI_RESULTS
               | c.MARIADB_CLIENT_EXTENDED_METADATA)
# A flavor bit of pyproxy's own, never sent: the connection is opened without
# CLIENT_DEPRECATE_EOF.  Clients without it prefer such connections (their
# replies then need no translation), and once they use the binary protocol
# take no other (see pyproxy.prepared).  Bits 32-63 are MariaDB's extended
# capabilities, so it sits at the top.
CLASSIC_EOF = 1 << 63

# CLIENT_DEPRECATE_EOF is asked for but for CLASSIC_EOF: its OK terminators
# carry the session-tracking data a classic EOF cannot (a classic client's
# session reads it back, see ClientSession.read_back_changes), and a client
# without it on such a connection gets the EOFs it expects by translation.  CLIENT_SESSION_TRACK is translated too,
# and CLIENT_LOCAL_FILES: a client without it that runs LOAD DATA LOCAL gets
# the error a server would give it, and the server an empty file.
# MARIADB_CLIENT_STMT_BULK_OPERATIONS only lets the server take
# COM_STMT_BULK_EXECUTE, which pyproxy refuses itself to a client that did not
# negotiate it: every connection asks for it (when the server offers it).
BASE_CAPABILITIES = (
    CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS
    | CLIENT.SECURE_CONNECTION | CLIENT.MULTI_STATEMENTS | CLIENT.MULTI_RESULTS
    | CLIENT.PLUGIN_AUTH | CLIENT.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT.CONNECT_ATTRS | CLIENT.SESSION_TRACK | CLIENT.DEPRECATE_EOF | CLIENT.LOCAL_FILES
    | c.MARIADB_CLIENT_STMT_BULK_OPERATIONS
)


class ServerLogin:
    """The login half of BackendConnection: from the server's greeting to its OK."""

    # Set by BackendConnection.__init__ and Twisted; declared for the checker.
    transport: Any
    target: Target
    flavor: int
    capabilities: int
    handshake: HandshakeV10 | None
    tracker: ResponseTracker
    state: SessionState
    _mode: str
    _seq: int
    _nonce: bytes
    _plugin: str

    def _start_tracking(self) -> None:
        raise NotImplementedError

    def _send(self, payload: bytes) -> None:
        self.transport.write(frame(payload, self._seq))  # type: ignore[union-attr]
        self._seq += 1

    def _auth_packet(self, seq: int, payload: bytes) -> None:
        self._seq = seq + 1
        if self.handshake is None:
            if payload[:1] == b"\xff":
                raise BackendError.from_err(parse_err(payload))
            self.handshake = hs = parse_handshake_v10(payload)
            self._nonce = hs.auth_data
            self._plugin = hs.auth_plugin if hs.auth_plugin in (auth.NATIVE, auth.CACHING_SHA2,
                                                                 auth.ED25519) else auth.NATIVE
            login = self.target.login
            if login is not None and login.native_sha1 is not None:
                # Only SHA1(password) is known: answer mysql_native_password at once.
                self._plugin = auth.NATIVE
            elif login is not None and login.iam:
                self._plugin = auth.CLEAR
            wanted = BASE_CAPABILITIES | (self.flavor & FLAVOR_BITS)
            if self.flavor & CLASSIC_EOF:
                wanted &= ~CLIENT.DEPRECATE_EOF
            if self.target.database:
                wanted |= CLIENT.CONNECT_WITH_DB
            capabilities = wanted & (hs.capabilities | CLIENT.LONG_PASSWORD)
            missing = self.flavor & FLAVOR_BITS & ~capabilities
            if missing:
                # The client negotiated them with pyproxy's greeting (another
                # server's): a reply without them would be misread.
                raise BackendError(*c.ER_HANDSHAKE_ERROR, f"server {self.target.host}:{self.target.port} "
                                   f"does not offer capabilities the client negotiated (0x{missing:x})")
            if capabilities >> 32:
                # MariaDB's extended capabilities are sent with CLIENT_MYSQL clear.
                capabilities &= ~CLIENT.LONG_PASSWORD
            self.capabilities = capabilities
            self.tracker.deprecate_eof = bool(self.capabilities & CLIENT.DEPRECATE_EOF)
            if not hs.capabilities & CLIENT.PROTOCOL_41:
                raise BackendError(*c.ER_HANDSHAKE_ERROR, "server does not speak protocol 4.1")
            if self.target.tls is not None:
                self._start_tls(hs)
            self._send(make_handshake_response41(HandshakeResponse41(
                self.capabilities, 1 << 30, self.target.charset, self.target.user,
                self._proof(self._plugin, self._nonce),
                self.target.database, self._plugin, {"_client_name": "pyproxy", "program_name": "pyproxy"})))
            return
        head = payload[:1]
        if head == b"\x00":
            ok = parse_ok(payload, bool(self.capabilities & CLIENT.SESSION_TRACK))
            self.state = initial_state(self.target.charset, self.target.database,
                                       bool(ok.status & c.SERVER_STATUS_AUTOCOMMIT),
                                       bool(self.capabilities & CLIENT.MULTI_STATEMENTS))
            self._mode = "idle"
            self._start_tracking()
        elif head == b"\xff":
            raise BackendError.from_err(parse_err(payload))
        elif head == b"\xfe":
            self._plugin, self._nonce = parse_auth_switch_request(payload)
            self._send(self._proof(self._plugin, self._nonce))
        elif head == b"\x01" and self._plugin == auth.CACHING_SHA2:
            data = payload[1:]
            if data == auth.SHA2_FAST_AUTH_SUCCESS:
                return
            if data == auth.SHA2_PERFORM_FULL_AUTH:
                self._send(auth.SHA2_REQUEST_PUBLIC_KEY)
                return
            self._send(auth.sha2_rsa_encrypt(self._password(), self._nonce, data))
        else:
            raise BackendError(*c.ER_HANDSHAKE_ERROR, f"unexpected packet 0x{payload[0]:02x} during login")

    @property
    def secure(self) -> bool:
        """Whether this connection is encrypted ([backend] tls): only then may a
        password or token go as mysql_clear_password."""
        return bool(getattr(self, "tls_started", False))

    def _proof(self, plugin: str, nonce: bytes) -> bytes:
        """The auth response for ``plugin``: from the target's password, or from the
        BackendLogin a client's login gave (its SHA1(password), a rotation's
        passwords, an RDS token).

        Raises:
            BackendError: 1251 for what cannot be answered: mysql_clear_password
                over plaintext, a plugin SHA1(password) cannot answer.  The message
                names the plugin, never a secret.
        """
        if plugin == auth.CLEAR and not self.secure:
            raise BackendError(*c.ER_NOT_SUPPORTED_AUTH_MODE,
                               "server asked for mysql_clear_password without TLS")
        login = self.target.login
        try:
            if login is None:
                if plugin == auth.CLEAR:
                    return self.target.password.encode() + b"\x00"
                return auth.proof_for(plugin, self.target.password.encode(), nonce)
            return login.proof(plugin, nonce, attempt=self.target.attempt, token=self.target.token)
        except ValueError as exc:
            raise BackendError(*c.ER_NOT_SUPPORTED_AUTH_MODE, str(exc)) from None

    def _password(self) -> bytes:
        """The clear password, for caching_sha2_password's full authentication."""
        login = self.target.login
        if login is None:
            return self.target.password.encode()
        if not login.passwords:
            raise BackendError(*c.ER_NOT_SUPPORTED_AUTH_MODE,
                               "caching_sha2_password full authentication needs the password, "
                               "which pyproxy does not know for this user")
        return login.passwords[min(self.target.attempt, len(login.passwords) - 1)].encode()

    def _start_tls(self, hs: HandshakeV10) -> None:
        """[backend] tls = "verify": SSLRequest, then TLS as a client, verifying the
        server's certificate; the login response follows inside TLS.  A server
        that offers no TLS is refused: never a silent fallback to plaintext."""
        target = self.target
        if not hs.capabilities & CLIENT.SSL:
            raise BackendError(*c.CR_SSL_CONNECTION_ERROR,
                               f"TLS to {target.host}:{target.port} failed: the server offers no TLS "
                               f"([backend] tls = \"verify\")")
        self.capabilities |= CLIENT.SSL
        self._send(make_ssl_request(self.capabilities, 1 << 30, target.charset))
        self.transport.startTLS(target.tls.options)  # type: ignore[union-attr]
        self.tls_started = True
