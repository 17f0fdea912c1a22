"""The login phase: a new connection's bytes in, one authenticated Identity out.

It owns the greeting (HandshakeV10: the server's version and status, what
pyproxy offers, a fresh nonce), the handshake timeout, capability
negotiation, the SSLRequest (the owner starts TLS when ``[tls]`` offers it;
``[tls] require`` refuses a login without it with 3159), the
authentication-plugin exchange (an AuthSwitchRequest to
mysql_native_password for a plugin pyproxy cannot check,
mysql_clear_password over TLS only, caching_sha2's "fast auth success", or
its full authentication when the credentials need the password itself: the
clear password over TLS, or without TLS encrypted with pyproxy's RSA key)
and the same exchange inside COM_CHANGE_USER.  Proofs are checked through
pyproxy.credentials.Credentials only.

It neither opens a session nor writes the final OK: it hands the Identity to
its owner, the connection it runs on (pyproxy.frontend.FrontendProtocol for
the pooled and the read-only listener, which starts its command phase with
it; an admin console would be another owner), and the owner answers.  Every
error ends the connection through the owner's fatal(), which writes the ERR
packet and closes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from pyproxy import auth
from pyproxy.credentials import Checked, Credentials
from pyproxy.wire import constants as c
from pyproxy.wire.constants import CLIENT
from pyproxy.wire.framing import Packet, frame
from pyproxy.wire.handshake import (
    ChangeUser,
    HandshakeV10,
    is_ssl_request,
    make_auth_more_data,
    make_auth_switch_request,
    make_handshake_v10,
    parse_handshake_response41,
)

if TYPE_CHECKING:
    from pyproxy.proxy import ServerInfo
    from pyproxy.tls import RsaKeys

# The largest packet a client may send before it has logged in (a login with
# connection attributes takes a few hundred bytes): an unauthenticated peer
# must not make pyproxy hold megabytes.
LOGIN_PACKET_LIMIT = 8192

#: What a client that logs in without TLS gets when [tls] require is on (MySQL's own words).
INSECURE_TRANSPORT = "Connections using insecure transport are prohibited while --require_secure_transport=ON."


@attrs.frozen(slots=True)
class Identity:
    """Who a client proved to be, and what it negotiated: what the login phase hands over."""

    user: str
    # What the client asked for and pyproxy offers (for COM_CHANGE_USER, what
    # the connection negotiated at its first login).
    capabilities: int
    # The collation id the client logged in with: its session's character set.
    charset: int
    # The schema the login named, if any.
    schema: str | None
    # Connection attributes (``_client_name``, ``program_name``...).
    attributes: Mapping[str, str]
    # The authentication plugin the proof was checked with.
    plugin: str
    # The client library is libmariadb, which reads a client error code in a
    # server's ERR as a malformed reply (see FrontendProtocol.error_packet).
    libmariadb: bool = False
    # The client logged in over TLS (what may travel in clear text, such as an
    # IAM token, depends on it).
    secure: bool = False
    # The clear password, when the login sent it (caching_sha2_password's full
    # authentication, mysql_clear_password); never shown.
    password: str | None = attrs.field(default=None, repr=False)


class LoginOwner(Protocol):
    """What the login phase needs from the connection it runs on."""

    transport: Any
    # The name the client gives, set by the login before it is proven: the
    # log lines and the access-denied message name it.
    user: str
    # TLS is on (the client sent an SSLRequest and the owner started it).
    secure: bool

    @property
    def log(self) -> Any: ...

    def login_accepted(self, identity: Identity, seq: int) -> None:
        """The proof checked out; ``seq`` is the sequence id the answer takes."""

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        """Writes the ERR packet and closes the connection."""

    def login_timed_out(self) -> None:
        """handshake_timeout passed; the owner decides whether the login is still on."""

    def start_tls(self) -> None:
        """The client sent an SSLRequest: TLS starts now, server side, on the
        owner's transport; the client's next packet comes through it."""


class Login:
    """One login exchange on one connection: fed the client's packets until it
    ends in the owner's login_accepted() or fatal()."""

    __slots__ = ("owner", "credentials", "nonce", "capabilities", "require_tls", "rsa", "_claim", "_full",
                 "_timer")

    def __init__(self, owner: LoginOwner, credentials: Credentials, nonce: bytes, capabilities: int, *,
                 require_tls: bool = False, rsa: Callable[[], RsaKeys] | None = None) -> None:
        self.owner = owner
        self.credentials = credentials
        self.nonce = nonce
        # What pyproxy offers (a first login; CLIENT_SSL when [tls] is
        # configured), or what the client negotiated (COM_CHANGE_USER).
        self.capabilities = capabilities
        # [tls] require: a login without TLS gets 3159.
        self.require_tls = require_tls
        # Gives the key pair of caching_sha2_password's full authentication
        # without TLS (made the first time a client asks for it).
        self.rsa = rsa
        # Who the client says it is while an AuthSwitchRequest awaits its reply.
        self._claim: Identity | None = None
        # Who the client says it is during caching_sha2_password's full authentication.
        self._full: Identity | None = None
        self._timer: Any = None

    def greet(self, connection_id: int, server: ServerInfo, plugin: str, clock: Any, timeout: float) -> None:
        """Sends the greeting, announcing ``plugin``, and gives the client
        ``timeout`` seconds to log in."""
        self.owner.transport.write(frame(make_handshake_v10(HandshakeV10(
            server.version, connection_id & 0xFFFFFFFF, self.nonce, self.capabilities,
            server.charset, server.status, plugin)), 0))
        self._timer = clock.callLater(timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        self.owner.login_timed_out()

    def stop(self) -> None:
        """The login is over, or the connection is: no timeout any more."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def receive(self, packet: Packet) -> bool:
        """The client's next login packet: its HandshakeResponse41 (or SSLRequest),
        or its reply to an AuthSwitchRequest.  Returns True when the login now
        waits for that reply."""
        if self._full is not None:
            return self._full_auth(packet)
        claim = self._claim
        if claim is not None:
            self._claim = None
            return self._check(claim, packet.payload, packet.seq + 1)
        payload = packet.payload
        owner = self.owner
        if is_ssl_request(payload):
            if not self.capabilities & CLIENT.SSL or owner.secure:
                owner.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake: TLS is not offered here", packet.seq + 1)
                return False
            owner.start_tls()
            return False
        try:
            response = parse_handshake_response41(payload)
        except ValueError:
            owner.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake", packet.seq + 1)
            return False
        capabilities = response.capabilities & self.capabilities
        owner.user = response.username
        if self.require_tls and not owner.secure:
            owner.log.warning("auth_failed", reason="insecure_transport")
            owner.fatal(c.ER_SECURE_TRANSPORT_REQUIRED, INSECURE_TRANSPORT, packet.seq + 1)
            return False
        claim = Identity(response.username, capabilities, response.charset, response.database,
                         response.attributes,
                         response.auth_plugin if capabilities & CLIENT.PLUGIN_AUTH else auth.NATIVE,
                         response.attributes.get("_client_name") == "libmariadb", owner.secure)
        return self._authenticate(claim, response.auth_response, packet.seq + 1)

    def change_user(self, request: ChangeUser, seq: int) -> bool:
        """COM_CHANGE_USER: the same exchange for another account (or the same one
        again), on the connection's nonce.  Returns True when it waits for the
        reply to an AuthSwitchRequest."""
        owner = self.owner
        previous = owner.user
        owner.user = request.username
        # The character set and schema are the request's; the connection's
        # capabilities and client library stay what its first login said.
        claim = Identity(request.username, self.capabilities, request.charset or 45, request.database,
                         {}, request.auth_plugin or auth.NATIVE, secure=owner.secure)
        if claim.plugin in auth.CLIENT_PLUGINS:
            owner.log.debug("change_user", previous=previous)
        return self._authenticate(claim, request.auth_response, seq)

    def _authenticate(self, claim: Identity, proof: bytes, seq: int) -> bool:
        if claim.plugin == auth.CLEAR and claim.secure:
            return self._check(claim, proof, seq)
        if claim.plugin not in auth.CLIENT_PLUGINS:
            # Ask for a plugin pyproxy can check, with the same nonce.  A
            # password in clear text is taken over TLS only: without it the
            # client is asked for a mysql_native_password proof instead.
            if claim.plugin == auth.CLEAR:
                self.owner.log.info("clear_password_without_tls")
            self._claim = attrs.evolve(claim, plugin=auth.NATIVE)
            self.owner.transport.write(frame(make_auth_switch_request(auth.NATIVE, self.nonce), seq))
            return True
        return self._check(claim, proof, seq)

    def _check(self, claim: Identity, proof: bytes, seq: int) -> bool:
        """Judges the client's first answer; True when the login waits for more
        (caching_sha2_password's full authentication)."""
        owner = self.owner
        if claim.plugin == auth.CLEAR:
            password = proof[:-1] if proof.endswith(b"\x00") else proof
            return self._check_password(claim, password, seq)
        checked = self.credentials.check(claim.user, claim.plugin, self.nonce, proof)
        if checked is Checked.NEEDS_PASSWORD and claim.plugin == auth.CACHING_SHA2:
            # The credentials cannot check a scramble: ask for the password
            # itself, as a server without a cache entry does.
            self._full = claim
            owner.transport.write(frame(make_auth_more_data(auth.SHA2_PERFORM_FULL_AUTH), seq))
            return True
        if checked is not Checked.ACCEPTED:
            self._refuse(claim, checked, bool(proof), seq)
            return False
        if claim.plugin == auth.CACHING_SHA2 and proof:
            owner.transport.write(frame(make_auth_more_data(auth.SHA2_FAST_AUTH_SUCCESS), seq))
            seq += 1
        owner.login_accepted(claim, seq)
        return False

    def _full_auth(self, packet: Packet) -> bool:
        """caching_sha2_password's full authentication: over TLS the client's
        reply is its password and a NUL; without TLS it asks for pyproxy's RSA
        public key (0x02) and then sends the password encrypted with it."""
        claim = self._full
        assert claim is not None
        payload, seq = packet.payload, packet.seq + 1
        if claim.secure:
            self._full = None
            return self._check_password(claim, payload[:-1] if payload.endswith(b"\x00") else payload, seq)
        if payload == auth.SHA2_REQUEST_PUBLIC_KEY:
            if self.rsa is None:
                self._full = None
                self.owner.fatal(c.ER_ACCESS_DENIED_ERROR, "caching_sha2_password full authentication "
                                                           "needs TLS here", seq)
                return False
            self.owner.transport.write(frame(make_auth_more_data(self.rsa().public_pem), seq))
            return True
        self._full = None
        password = self.rsa().decrypt_password(payload, self.nonce) if self.rsa is not None else None
        if password is None:
            self._refuse(claim, Checked.REFUSED, True, seq)
            return False
        return self._check_password(claim, password, seq)

    def _check_password(self, claim: Identity, password: bytes, seq: int) -> bool:
        checked = self.credentials.check(claim.user, auth.CLEAR, self.nonce, password)
        if checked is not Checked.ACCEPTED:
            self._refuse(claim, checked, bool(password), seq)
            return False
        self.owner.login_accepted(attrs.evolve(claim, password=password.decode("utf-8", "surrogateescape")), seq)
        return False

    def _refuse(self, claim: Identity, checked: Checked, with_password: bool, seq: int) -> None:
        owner = self.owner
        owner.log.warning("auth_failed", plugin=claim.plugin, known_user=checked is not Checked.UNKNOWN_USER)
        peer = owner.transport.getPeer()
        host = peer.host if hasattr(peer, "host") else "localhost"
        owner.fatal(c.ER_ACCESS_DENIED_ERROR, f"Access denied for user '{claim.user}'@'{host}' "
                                              f"(using password: {'YES' if with_password else 'NO'})", seq)
