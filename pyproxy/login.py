"""The login phase: a new connection's bytes in, one authenticated Identity out.

It owns the greeting (HandshakeV10: the server's version and status, what
pyproxy offers, a fresh nonce), the handshake timeout, capability
negotiation, the refusal of an SSLRequest (pyproxy offers no TLS yet), the
authentication-plugin exchange (an AuthSwitchRequest to
mysql_native_password for a plugin pyproxy cannot check, caching_sha2's "fast
auth success") and the same exchange inside COM_CHANGE_USER.  Proofs are
checked through pyproxy.credentials.Credentials only.

It neither opens a session nor writes the final OK: it hands the Identity to
its owner, the connection it runs on (pyproxy.frontend.FrontendProtocol for
the pooled and the read-only listener, which starts its command phase with
it; an admin console would be another owner), and the owner answers.  Every
error ends the connection through the owner's fatal(), which writes the ERR
packet and closes.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    from pyproxy.query_stats import QueryStats

# The largest packet a client may send before it has logged in (a login with
# connection attributes takes a few hundred bytes): an unauthenticated peer
# must not make pyproxy hold megabytes.
LOGIN_PACKET_LIMIT = 8192


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


class LoginOwner(Protocol):
    """What the login phase needs from the connection it runs on."""

    transport: Any
    # The name the client gives, set by the login before it is proven: the
    # log lines and the access-denied message name it.
    user: str

    @property
    def log(self) -> Any: ...

    def login_accepted(self, identity: Identity, seq: int) -> None:
        """The proof checked out; ``seq`` is the sequence id the answer takes."""

    def fatal(self, error: tuple[int, str], message: str, seq: int | None = None) -> None:
        """Writes the ERR packet and closes the connection."""

    def login_timed_out(self) -> None:
        """handshake_timeout passed; the owner decides whether the login is still on."""


class Login:
    """One login exchange on one connection: fed the client's packets until it
    ends in the owner's login_accepted() or fatal()."""

    __slots__ = ("owner", "credentials", "nonce", "capabilities", "stats", "_claim", "_timer")

    def __init__(self, owner: LoginOwner, credentials: Credentials, nonce: bytes, capabilities: int,
                 stats: QueryStats | None = None) -> None:
        self.owner = owner
        # Where the bytes the login writes are counted (a pooled listener's
        # clients; not the admin console's).
        self.stats = stats
        self.credentials = credentials
        self.nonce = nonce
        # What pyproxy offers (a first login), or what the client negotiated
        # (COM_CHANGE_USER).
        self.capabilities = capabilities
        # Who the client says it is while an AuthSwitchRequest awaits its reply.
        self._claim: Identity | None = None
        self._timer: Any = None

    def greet(self, connection_id: int, server: ServerInfo, plugin: str, clock: Any, timeout: float) -> None:
        """Sends the greeting, announcing ``plugin``, and gives the client
        ``timeout`` seconds to log in."""
        self._write(frame(make_handshake_v10(HandshakeV10(
            server.version, connection_id & 0xFFFFFFFF, self.nonce, self.capabilities,
            server.charset, server.status, plugin)), 0))
        self._timer = clock.callLater(timeout, self._too_slow)

    def _write(self, data: bytes) -> None:
        if self.stats is not None:
            self.stats.bytes_out += len(data)
        self.owner.transport.write(data)

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
        claim = self._claim
        if claim is not None:
            self._claim = None
            self._check(claim, packet.payload, packet.seq + 1)
            return False
        payload = packet.payload
        if is_ssl_request(payload):
            self.owner.fatal(c.ER_HANDSHAKE_ERROR, "pyproxy does not offer TLS yet", packet.seq + 1)
            return False
        try:
            response = parse_handshake_response41(payload)
        except ValueError:
            self.owner.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake", packet.seq + 1)
            return False
        capabilities = response.capabilities & self.capabilities
        self.owner.user = response.username
        claim = Identity(response.username, capabilities, response.charset, response.database,
                         response.attributes,
                         response.auth_plugin if capabilities & CLIENT.PLUGIN_AUTH else auth.NATIVE,
                         response.attributes.get("_client_name") == "libmariadb")
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
                         {}, request.auth_plugin or auth.NATIVE)
        if claim.plugin in auth.CLIENT_PLUGINS:
            owner.log.debug("change_user", previous=previous)
        return self._authenticate(claim, request.auth_response, seq)

    def _authenticate(self, claim: Identity, proof: bytes, seq: int) -> bool:
        if claim.plugin not in auth.CLIENT_PLUGINS:
            # Ask for a plugin pyproxy can check, with the same nonce.
            self._claim = attrs.evolve(claim, plugin=auth.NATIVE)
            self._write(frame(make_auth_switch_request(auth.NATIVE, self.nonce), seq))
            return True
        self._check(claim, proof, seq)
        return False

    def _check(self, claim: Identity, proof: bytes, seq: int) -> None:
        owner = self.owner
        checked = self.credentials.check(claim.user, claim.plugin, self.nonce, proof)
        if checked is not Checked.ACCEPTED:
            owner.log.warning("auth_failed", plugin=claim.plugin, known_user=checked is not Checked.UNKNOWN_USER)
            peer = owner.transport.getPeer()
            host = peer.host if hasattr(peer, "host") else "localhost"
            owner.fatal(c.ER_ACCESS_DENIED_ERROR, f"Access denied for user '{claim.user}'@'{host}' "
                                                  f"(using password: {'YES' if proof else 'NO'})", seq)
            return
        if claim.plugin == auth.CACHING_SHA2 and proof:
            self._write(frame(make_auth_more_data(auth.SHA2_FAST_AUTH_SUCCESS), seq))
            seq += 1
        owner.login_accepted(claim, seq)
