"""The login phase: a new connection's bytes in, one authenticated Identity out.

It owns the greeting (HandshakeV10: the server's version and status, what
pyproxy offers, a fresh nonce), the handshake timeout, capability
negotiation, the SSLRequest (the owner starts TLS when ``[tls]`` offers it;
``[tls] require`` refuses a login without it with 3159), the
authentication-plugin exchange (an AuthSwitchRequest to the plugin what is
known of the user can check, caching_sha2's "fast auth success", or its full
authentication for a user known by its stored hash: the clear password over
TLS, or encrypted with pyproxy's RSA key) and the same exchange inside
COM_CHANGE_USER.  Proofs are checked through
pyproxy.credential_sources.Credentials only, in its two steps: what is known
of the user (which may mean asking Secrets Manager's cache or the server's
``mysql.user``), then the client's answer judged (which may mean asking STS).
Both are Deferreds: the login waits for them without blocking the reactor,
and a client that leaves meanwhile is forgotten (``stop``) so their answers
go nowhere.

mysql_clear_password (a password or an IAM token in clear text) is taken
only when the owner says the connection is ``secure`` (TLS); over plaintext
a client is never asked for it, and one that sends it anyway is refused.

Answers to an address with too many recent failures wait
(pyproxy.throttle); refusals are logged with their reason, never with what
the client sent.

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
from pyproxy.credential_sources import (
    CLEAR_TEXT_WITHOUT_TLS,
    PLUGIN_NOT_ALLOWED,
    BackendLogin,
    Credential,
    Credentials,
    Verdict,
)
from pyproxy.throttle import LoginThrottle
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
    from pyproxy.query_stats import QueryStats
    from pyproxy.tls import RsaKeys
    from pyproxy.proxy import ServerInfo

# The largest packet a client may send before it has logged in (a login with
# connection attributes takes a few hundred bytes): an unauthenticated peer
# must not make pyproxy hold megabytes.
LOGIN_PACKET_LIMIT = 8192

#: What a client that logs in without TLS gets when [tls] require is on (MySQL's own words).
INSECURE_TRANSPORT = "Connections using insecure transport are prohibited while --require_secure_transport=ON."

#: Refusal reasons of the login itself (the credential sources have theirs).
UNKNOWN_USER = "unknown_user"
LOOKUP_FAILED = "credential_lookup_failed"


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


class LoginOwner(Protocol):
    """What the login phase needs from the connection it runs on."""

    transport: Any
    # The name the client gives, set by the login before it is proven: the
    # log lines and the access-denied message name it.
    user: str

    @property
    def log(self) -> Any: ...

    @property
    def secure(self) -> bool:
        """Whether the connection is encrypted (TLS): only then are clear-text
        passwords and IAM tokens (mysql_clear_password) accepted."""

    def login_accepted(self, identity: Identity, seq: int, backend: BackendLogin | None = None) -> None:
        """The proof checked out; ``seq`` is the sequence id the answer takes;
        ``backend`` is how to log in to the server as that user (what the
        proof gave), for that user's connections only."""

    def fatal(self, error: tuple[int, str], message: str, seq: int) -> None:
        """Writes the ERR packet (sequence id ``seq``) and closes the connection."""

    def change_user_refused(self, error: tuple[int, str], message: str, seq: int) -> None:
        """Writes the ERR packet of a refused COM_CHANGE_USER; the connection stays."""

    def login_refused(self, reason: str) -> None:
        """A login was refused, for ``reason`` (one of a fixed set): counted."""

    def login_timed_out(self) -> None:
        """handshake_timeout passed; the owner decides whether the login is still on."""

    def start_tls(self) -> None:
        """The client sent an SSLRequest: TLS starts now, server side, on the
        owner's transport; the client's next packet comes through it."""


class Login:
    """One login exchange on one connection: fed the client's packets until it
    ends in the owner's login_accepted() or fatal()."""

    __slots__ = ("owner", "credentials", "nonce", "capabilities", "stats", "throttle", "require_tls", "rsa",
                 "announced", "_claim", "_credential", "_full", "_timer", "_busy", "_over", "_delayed", "_changing")

    def __init__(self, owner: LoginOwner, credentials: Credentials, nonce: bytes, capabilities: int,
                 stats: QueryStats | None = None, throttle: LoginThrottle | None = None, *,
                 require_tls: bool = False, rsa: Callable[[], RsaKeys] | None = None) -> None:
        self.owner = owner
        # Where the bytes the login writes are counted (a pooled listener's
        # clients; not the admin console's).
        self.stats = stats
        self.credentials = credentials
        self.nonce = nonce
        # What pyproxy offers (a first login; CLIENT_SSL when [tls] is
        # configured), or what the client negotiated (COM_CHANGE_USER).
        self.capabilities = capabilities
        self.throttle = throttle
        # [tls] require: a login without TLS gets 3159.
        self.require_tls = require_tls
        # Gives the key pair of caching_sha2_password's full authentication
        # without TLS (made the first time a client asks for it).
        self.rsa = rsa
        # The plugin the greeting announced ("" for COM_CHANGE_USER).
        self.announced = ""
        # caching_sha2_password's full authentication under way: who the client
        # says it is, and what is known of that user.
        self._full: tuple[Identity, Credential] | None = None
        # Who the client says it is, and what is known of that user, while an
        # AuthSwitchRequest awaits its reply.
        self._claim: Identity | None = None
        self._credential: Credential | None = None
        self._timer: Any = None
        # A lookup, a check or a delayed answer is under way: the client has
        # nothing to send meanwhile.
        self._busy = False
        # The connection is gone, or the login is over: late answers are dropped.
        self._over = False
        self._delayed: Any = None
        # A COM_CHANGE_USER, whose refusal the connection survives.
        self._changing = False

    def greet(self, connection_id: int, server: ServerInfo, plugin: str, clock: Any, timeout: float) -> None:
        """Sends the greeting, announcing ``plugin``, and gives the client
        ``timeout`` seconds to log in."""
        self.announced = plugin
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
        """The login is over, or the connection is: no timeout any more, and
        whatever a lookup or check still under way says is dropped."""
        self._over = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        self._delayed = None

    def receive(self, packet: Packet) -> bool:
        """The client's next login packet: its HandshakeResponse41 (or SSLRequest),
        or its reply to an AuthSwitchRequest.  Returns True while the login
        goes on (it waits for a lookup, a check or the client's reply)."""
        if self._busy:
            # The client speaks out of turn while its login is being checked.
            self.owner.fatal(c.ER_NET_PACKETS_OUT_OF_ORDER, "Got packets out of order", packet.seq + 1)
            return False
        if self._full is not None:
            self._full_auth(packet)
            return not self._over
        claim = self._claim
        if claim is not None:
            credential, self._claim, self._credential = self._credential, None, None
            assert credential is not None
            self._verify(credential, claim, packet.payload, packet.seq + 1)
            return not self._over
        payload = packet.payload
        owner = self.owner
        if is_ssl_request(payload):
            if not self.capabilities & CLIENT.SSL or owner.secure:
                owner.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake: TLS is not offered here", packet.seq + 1)
                return False
            owner.start_tls()
            return not self._over
        try:
            response = parse_handshake_response41(payload)
        except ValueError:
            self.owner.fatal(c.ER_HANDSHAKE_ERROR, "Bad handshake", packet.seq + 1)
            return False
        capabilities = response.capabilities & self.capabilities
        owner.user = response.username
        if self.require_tls and not owner.secure:
            owner.log.warning("auth_failed", reason="insecure_transport")
            owner.login_refused("insecure_transport")
            owner.fatal(c.ER_SECURE_TRANSPORT_REQUIRED, INSECURE_TRANSPORT, packet.seq + 1)
            return False
        claim = Identity(response.username, capabilities, response.charset, response.database,
                         response.attributes,
                         response.auth_plugin if capabilities & CLIENT.PLUGIN_AUTH else auth.NATIVE,
                         response.attributes.get("_client_name") == "libmariadb", owner.secure)
        self._authenticate(claim, response.auth_response, packet.seq + 1)
        return not self._over

    def change_user(self, request: ChangeUser, seq: int) -> bool:
        """COM_CHANGE_USER: the same exchange for another account (or the same one
        again), on the connection's nonce.  Returns True while the login goes on."""
        owner = self.owner
        previous = owner.user
        owner.user = request.username
        # The character set and schema are the request's; the connection's
        # capabilities and client library stay what its first login said.
        claim = Identity(request.username, self.capabilities, request.charset or 45, request.database,
                         {}, request.auth_plugin or auth.NATIVE, secure=owner.secure)
        owner.log.debug("change_user", previous=previous)
        self._changing = True
        self._authenticate(claim, request.auth_response, seq)
        return not self._over

    # -- the two steps ---------------------------------------------------------

    def _authenticate(self, claim: Identity, answer: bytes, seq: int) -> None:
        """Step one: what is known of the user decides which plugin it answers with."""
        self._busy = True
        d = self.credentials.credential(claim.user)
        d.addCallbacks(self._known, self._failed, callbackArgs=(claim, answer, seq),
                       errbackArgs=(claim, answer, seq))

    def _known(self, credential: Credential | None, claim: Identity, answer: bytes, seq: int) -> None:
        if self._over:
            return
        self._busy = False
        if credential is None:
            self._refuse(claim, answer, seq, UNKNOWN_USER, "")
            return
        secure = self.owner.secure
        if (claim.plugin == auth.CACHING_SHA2 and auth.CACHING_SHA2 not in credential.plugins
                and credential.hashes and (secure or self.rsa is not None and self.announced == auth.CACHING_SHA2)):
            # The stored hash checks no caching_sha2_password scramble: the client is
            # asked for the password itself, as a server without a cache entry does
            # (its full authentication): in clear over TLS, else encrypted with
            # pyproxy's RSA key.  Without TLS that needs a greeting that announced
            # caching_sha2_password; otherwise the client is switched below to
            # mysql_native_password, which every client speaks.
            self._full = (claim, credential)
            self._write(frame(make_auth_more_data(auth.SHA2_PERFORM_FULL_AUTH), seq))
            return
        if credential.iam is not None and secure and claim.plugin != auth.CLEAR:
            # A user [[iam.roles]] maps, over TLS: the client is asked for its
            # password in clear, which may be an IAM token (a Lambda function's
            # driver answers the greeting with a scramble of the token, which
            # nothing could check); a client with the password sends that.
            self._claim = attrs.evolve(claim, plugin=auth.CLEAR)
            self._credential = credential
            self._write(frame(make_auth_switch_request(auth.CLEAR, self.nonce), seq))
            return
        if claim.plugin == auth.CLEAR and not secure and auth.NATIVE in credential.plugins \
                and credential.iam is None:
            # A password in clear over plaintext: as a server does for a
            # mysql_native_password account, the client is asked for a proof instead;
            # what it sent in clear is never checked.  (A user IAM maps is refused
            # below: its client holds a token, which no proof can be made from.)
            self.owner.log.info("clear_password_without_tls")
        elif claim.plugin in credential.plugins or claim.plugin == auth.CLEAR:
            # mysql_clear_password over plaintext for a user only IAM knows is
            # refused by the check itself.
            self._verify(credential, claim, answer, seq)
            return
        plugins = [plugin for plugin in credential.plugins if plugin != auth.CLEAR or secure]
        if not plugins:
            # Only a clear-text answer (an IAM token) would do, and the connection
            # is not encrypted: the client is not asked to send it.
            self._refuse(claim, answer, seq, CLEAR_TEXT_WITHOUT_TLS
                         if auth.CLEAR in credential.plugins else PLUGIN_NOT_ALLOWED, credential.source)
            return
        # Ask for a plugin the secret can check, with the same nonce.
        self._claim = attrs.evolve(claim, plugin=plugins[0])
        self._credential = credential
        self._write(frame(make_auth_switch_request(plugins[0], self.nonce), seq))

    def _verify(self, credential: Credential, claim: Identity, answer: bytes, seq: int) -> None:
        """Step two: the client's answer judged."""
        self._busy = True
        d = self.credentials.verify(credential, claim.plugin, self.nonce, answer, secure=self.owner.secure)
        d.addCallbacks(self._judged, self._failed, callbackArgs=(credential, claim, answer, seq),
                       errbackArgs=(claim, answer, seq))

    def _judged(self, verdict: Verdict, credential: Credential, claim: Identity, answer: bytes,
                seq: int) -> None:
        if self._over:
            return
        if not verdict.accepted:
            self._refuse(claim, answer, seq, verdict.reason, credential.source)
            return
        if verdict.identity:
            self.owner.log.info("iam_login", identity=verdict.identity)
        self._answer(lambda: self._accept(claim, answer, seq, verdict.login))

    def _full_auth(self, packet: Packet) -> None:
        """caching_sha2_password's full authentication: over TLS the client's reply
        is its password and a NUL; without TLS it asks for pyproxy's RSA public
        key (0x02) and then sends the password encrypted with it."""
        assert self._full is not None
        claim, credential = self._full
        payload, seq = packet.payload, packet.seq + 1
        if claim.secure:
            self._full = None
            self._check_password(credential, claim, payload[:-1] if payload.endswith(b"\x00") else payload, seq)
            return
        if payload == auth.SHA2_REQUEST_PUBLIC_KEY and self.rsa is not None:
            self._write(frame(make_auth_more_data(self.rsa().public_pem), seq))
            return
        self._full = None
        password = self.rsa().decrypt_password(payload, self.nonce) if self.rsa is not None else None
        if password is None:
            self._refuse(claim, b"x", seq, "full_authentication_failed", credential.source)
            return
        self._check_password(credential, claim, password, seq)

    def _check_password(self, credential: Credential, claim: Identity, password: bytes, seq: int) -> None:
        """The password itself (sent over TLS, or RSA-encrypted) checked against what
        is known of the user; it then logs in that user's connections too."""
        self._busy = True
        d = self.credentials.verify(credential, auth.CLEAR, self.nonce, password, secure=True)

        def judged(verdict: Verdict) -> None:
            if self._over:
                return
            self._busy = False
            if not verdict.accepted:
                self._refuse(claim, password, seq, verdict.reason, credential.source)
                return
            self._answer(lambda: self.owner.login_accepted(claim, seq, verdict.login))

        d.addCallbacks(judged, self._failed, errbackArgs=(claim, password, seq))

    def _failed(self, failure: Any, claim: Identity, answer: bytes, seq: int) -> None:
        """A source or check failed unexpectedly: the client is refused, the log says
        what kind of failure (never its message, which could quote a value)."""
        if self._over:
            return
        self.owner.log.error("credential_check_failed", error=type(failure.value).__name__)
        self._refuse(claim, answer, seq, LOOKUP_FAILED, "")

    # -- answers -----------------------------------------------------------------

    def _address(self) -> str:
        peer = self.owner.transport.getPeer()
        return peer.host if hasattr(peer, "host") else "localhost"

    def _answer(self, action: Callable[[], None]) -> float:
        """Runs ``action`` (the answer) now, or after the delay the throttle sets for
        the client's address; returns the delay."""
        address = self._address()
        delay = self.throttle.delay(address) if self.throttle is not None else 0.0
        if delay <= 0:
            action()
            return 0.0
        self._busy = True
        self.owner.log.info("login_delayed", peer=address, seconds=delay,
                            failures=self.throttle.failures(address))  # type: ignore[union-attr]

        def later() -> None:
            self._delayed = None
            if not self._over:
                self._busy = False
                action()

        self._delayed = self.throttle.clock.callLater(delay, later)  # type: ignore[union-attr]
        return delay

    def _accept(self, claim: Identity, answer: bytes, seq: int, backend: BackendLogin | None) -> None:
        owner = self.owner
        if claim.plugin == auth.CACHING_SHA2 and answer:
            self._write(frame(make_auth_more_data(auth.SHA2_FAST_AUTH_SUCCESS), seq))
            seq += 1
        owner.login_accepted(claim, seq, backend)

    def _refuse(self, claim: Identity, answer: bytes, seq: int, reason: str, source: str) -> None:
        """1045, as a server says it, after the throttle's delay; the reason, the
        plugin and where the user is known from go to the log only."""
        address = self._address()
        refuse = self.owner.change_user_refused if self._changing else self.owner.fatal
        delay = self._answer(lambda: refuse(
            c.ER_ACCESS_DENIED_ERROR, f"Access denied for user '{claim.user}'@'{address}' "
                                      f"(using password: {'YES' if answer else 'NO'})", seq))
        self.owner.login_refused(reason)
        failures = 0
        if self.throttle is not None:
            self.throttle.failed(address)
            failures = self.throttle.failures(address)
        self.owner.log.warning("auth_failed", reason=reason, plugin=claim.plugin, source=source or None,
                               peer=address, failures=failures, delayed=delay or None)
