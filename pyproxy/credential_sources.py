"""Where users' secrets come from, and how a client's answer is checked against them.

Each place pyproxy can learn a user's secret from is one
:class:`CredentialSource`: the configured ``[[users]]`` (:class:`ConfigSource`),
AWS Secrets Manager (:class:`pyproxy.secrets.SecretsSource`), the server's own
``mysql.user`` (:class:`pyproxy.lookup.LookupSource`).  :class:`Credentials`
chains them (the first that knows a user answers for it) and adds IAM tokens
for the users ``[[iam.roles]]`` name.

The login phase uses it in two steps, because the plugin a client must answer
with depends on what is known of its user:

1. ``credentials.credential(user)`` fires with a :class:`Credential`, or None
   when nothing knows the user (refuse with 1045).  ``credential.plugins`` are
   the plugins its secret can check, preferred first: a client that answered
   with another one is switched (AuthSwitchRequest) to the first;
   mysql_clear_password only over TLS.
2. ``credentials.verify(credential, plugin, nonce, answer, secure=...)`` fires
   with a :class:`Verdict`: refused with a ``reason`` for the log (1045 to the
   client), or accepted with the :class:`BackendLogin` that logs in to the
   server as that user.

After the server refuses a login made with a :class:`BackendLogin`, the login
or pool code calls ``credentials.backend_refused(user)``, so that sources
that can look again (Secrets Manager, the lookup) do.  No secret is ever part
of a reason, a repr or a log line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from pyproxy import auth
from pyproxy.config import UserConfig

#: Refusal reasons (Verdict.reason); IAM adds its own (pyproxy.iam.REASONS).
WRONG_PASSWORD = "wrong_password"
PLUGIN_NOT_ALLOWED = "plugin_not_allowed"
CLEAR_TEXT_WITHOUT_TLS = "clear_text_without_tls"
NO_BACKEND_CREDENTIAL = "no_backend_credential"

#: How a pyproxy IAM token begins (pyproxy.iam.TOKEN_PREFIX, repeated here so
#: that this module needs nothing of the AWS side).
IAM_TOKEN_PREFIX = "pyproxy-v1."


@attrs.frozen
class BackendLogin:
    """How pyproxy logs in to the server as ``user``, in exactly one way.

    ``passwords``: clear text, any plugin; tried in order when the server
    refuses one (during a Secrets Manager rotation it may have either).
    ``native_sha1``: SHA1(password), recovered from a client's proof against
    a stored hash; it answers mysql_native_password only.  ``iam``: an RDS IAM
    token (pyproxy.iam.RdsTokens), sent as mysql_clear_password, over TLS.
    """

    user: str
    passwords: tuple[str, ...] = attrs.field(default=(), repr=False)
    native_sha1: bytes | None = attrs.field(default=None, repr=False)
    iam: bool = False

    @property
    def attempts(self) -> int:
        """How many logins are worth making before giving up (see ``proof``)."""
        return max(1, len(self.passwords))

    def proof(self, plugin: str, nonce: bytes, *, attempt: int = 0, token: str = "") -> bytes:
        """The auth response for the plugin the server asked for.

        Args:
            attempt: which of ``passwords`` (after the server refused earlier ones).
            token: the current RDS token, for an ``iam`` login.

        Raises:
            ValueError: this login cannot answer ``plugin``; the message says why
                and holds no secret.
        """
        if self.iam:
            if plugin != auth.CLEAR or not token:
                raise ValueError(f"an IAM login answers mysql_clear_password only, not {plugin}")
            return token.encode() + b"\x00"
        if self.native_sha1 is not None:
            if plugin != auth.NATIVE:
                raise ValueError(f"only SHA1(password) is known for {self.user!r}, which answers "
                                 f"mysql_native_password only, not {plugin}")
            return auth.native_proof_from_sha1(self.native_sha1, nonce)
        password = self.passwords[attempt] if self.passwords else ""
        return auth.proof_for(plugin, password.encode(), nonce)


@attrs.frozen
class Verdict:
    """A client's answer judged: ``login`` when accepted, else a ``reason`` for the
    log; ``identity`` is the verified IAM ARN of a token login."""

    login: BackendLogin | None
    reason: str = ""
    identity: str = ""

    @property
    def accepted(self) -> bool:
        return self.login is not None


def refused(reason: str) -> Verdict:
    return Verdict(None, reason)


class TokenCheck(Protocol):
    """Verifies IAM tokens (pyproxy.iam.TokenVerifier)."""

    def maps(self, user: str) -> bool:
        """Whether any identity may log in as ``user`` at all."""

    def verify(self, token: str, user: str) -> defer.Deferred[str]:
        """Fires with the verified ARN when the token may log in as ``user``; fails
        with pyproxy.iam.TokenRejected (its ``reason`` for the log) otherwise."""


@attrs.frozen
class Credential:
    """What one source knows of one user's secret.

    ``passwords`` are clear text (two during a rotation), ``hashes`` stored
    mysql_native_password hashes, SHA1(SHA1(password)); ``iam`` checks
    tokens for users an ``[[iam.roles]]`` entry names.  None of them shows in
    the repr.
    """

    user: str
    source: str
    passwords: tuple[str, ...] = attrs.field(default=(), repr=False)
    hashes: tuple[bytes, ...] = attrs.field(default=(), repr=False)
    iam: TokenCheck | None = attrs.field(default=None, repr=False)

    @property
    def plugins(self) -> tuple[str, ...]:
        """The plugins a client may answer with, preferred first.  A hash checks
        only mysql_native_password proofs; caching_sha2_password needs the
        password itself; mysql_clear_password (TLS only) carries a password or
        an IAM token."""
        plugins: list[str] = []
        if self.passwords or self.hashes:
            plugins.append(auth.NATIVE)
        if self.passwords:
            plugins.append(auth.CACHING_SHA2)
        if self.passwords or self.hashes or self.iam is not None:
            plugins.append(auth.CLEAR)
        return tuple(plugins)

    def check(self, plugin: str, nonce: bytes, answer: bytes, *,
              secure: bool) -> defer.Deferred[Verdict]:
        """Judges a client's answer for ``plugin`` (its proof, or for
        mysql_clear_password its password or token, NUL-terminated)."""
        if plugin == auth.CLEAR:
            if not secure:
                return defer.succeed(refused(CLEAR_TEXT_WITHOUT_TLS))
            text = answer[:-1] if answer.endswith(b"\x00") else answer
            if self.iam is not None and text.startswith(IAM_TOKEN_PREFIX.encode()):
                return self._check_token(text.decode("ascii", "replace"))
            return defer.succeed(self._check_clear(text))
        if plugin not in self.plugins:
            return defer.succeed(refused(PLUGIN_NOT_ALLOWED))
        for password in self.passwords:
            if auth.verify(plugin, password.encode(), nonce, answer):
                return defer.succeed(Verdict(BackendLogin(self.user, self._backend_order(password))))
        if plugin == auth.NATIVE:
            for stage2 in self.hashes:
                sha1 = auth.recover_native_sha1(stage2, nonce, answer)
                if sha1 is not None:
                    return defer.succeed(Verdict(BackendLogin(self.user, native_sha1=sha1)))
        return defer.succeed(refused(WRONG_PASSWORD))

    def _backend_order(self, matched: str) -> tuple[str, ...]:
        """Every known password, the one the client proved first: during a
        rotation it is the likelier to be the server's."""
        return (matched, *(password for password in self.passwords if password != matched))

    def _check_clear(self, text: bytes) -> Verdict:
        for password in self.passwords:
            if auth.verify_clear(password.encode(), text):
                return Verdict(BackendLogin(self.user, self._backend_order(password)))
        for known in self.hashes:
            if auth.verify_clear_hash(known, text):
                # The password itself is now known: any plugin can log in with it.
                return Verdict(BackendLogin(self.user, (text.decode("utf-8", "surrogateescape"),)))
        return refused(WRONG_PASSWORD)

    def _check_token(self, token: str) -> defer.Deferred[Verdict]:
        assert self.iam is not None

        def accepted(arn: str) -> Verdict:
            if not self.passwords:
                # Nothing to log in to the server with (Credentials.verify
                # supplies an RDS token instead when [backend] iam is on).
                return Verdict(None, NO_BACKEND_CREDENTIAL, arn)
            return Verdict(BackendLogin(self.user, self.passwords), identity=arn)

        def rejected(failure: Failure) -> Verdict:
            reason = getattr(failure.value, "reason", None)
            if reason is None:
                return failure  # type: ignore[return-value]  # a bug: let it show
            return refused(reason)

        return self.iam.verify(token, self.user).addCallbacks(accepted, rejected)


class CredentialSource(Protocol):
    """One place users' secrets come from.

    ``credential`` answers from what the source holds (a Deferred, since a
    source may have to ask a server); ``refresh`` is the hint that what it
    said may be stale (the server refused a login made with it, or a client's
    proof failed against it) and fires True if the source looked again, so a
    second check is worth making.  Sources limit how often they look again.
    """

    name: str

    def credential(self, user: str) -> defer.Deferred[Credential | None]: ...

    def refresh(self, user: str) -> defer.Deferred[bool]: ...


@attrs.define
class ConfigSource:
    """The ``[[users]]`` of the configuration: a password, or its stored hash."""

    users: Sequence[UserConfig]
    name: str = "config"

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        for account in self.users:
            if account.name == user:
                if account.password_hash:
                    return defer.succeed(Credential(user, self.name, hashes=(
                        auth.parse_stored_hash(account.password_hash),)))
                return defer.succeed(Credential(user, self.name, passwords=(account.password,)))
        return defer.succeed(None)

    def refresh(self, user: str) -> defer.Deferred[bool]:
        return defer.succeed(False)  # the file changes only by a reload


@attrs.define
class Credentials:
    """The sources in order (the first that knows a user answers for it), IAM
    tokens for the users ``iam`` maps, and ``backend_iam`` ([backend] iam):
    backend logins by RDS token instead of by what the client proved."""

    sources: Sequence[CredentialSource]
    iam: TokenCheck | None = None
    backend_iam: bool = False

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        """What the first source that knows ``user`` says, with IAM tokens added
        when an [[iam.roles]] entry names the user."""
        return self._first(user, 0).addCallback(self._with_iam, user)

    def _first(self, user: str, index: int) -> defer.Deferred[Credential | None]:
        if index == len(self.sources):
            return defer.succeed(None)
        return self.sources[index].credential(user).addCallback(
            lambda found: found if found is not None else self._first(user, index + 1))

    def _with_iam(self, found: Credential | None, user: str) -> Credential | None:
        if self.iam is None or not self.iam.maps(user):
            return found
        if found is None:
            return Credential(user, "iam", iam=self.iam)
        return attrs.evolve(found, iam=self.iam)

    def verify(self, credential: Credential, plugin: str, nonce: bytes, answer: bytes, *,
               secure: bool) -> defer.Deferred[Verdict]:
        """Judges a client's answer.  A wrong password checked against what a
        source may hold stale (a rotated secret, a password changed on the
        server) is checked once more after that source looked again."""
        d = credential.check(plugin, nonce, answer, secure=secure)

        def retry(verdict: Verdict) -> Verdict | defer.Deferred[Verdict]:
            source = self._source(credential.source)
            if verdict.reason != WRONG_PASSWORD or source is None:
                return verdict

            def looked(again: bool) -> Verdict | defer.Deferred[Verdict]:
                if not again:
                    return verdict
                return source.credential(credential.user).addCallback(
                    lambda fresh: verdict if fresh is None else self._with_iam(fresh, fresh.user).check(
                        plugin, nonce, answer, secure=secure))

            return source.refresh(credential.user).addCallback(looked)

        return d.addCallback(retry).addCallback(self._backend, credential.user)

    def _backend(self, verdict: Verdict, user: str) -> Verdict:
        if self.backend_iam and (verdict.accepted or verdict.reason == NO_BACKEND_CREDENTIAL):
            return Verdict(BackendLogin(user, iam=True), identity=verdict.identity)
        return verdict

    def _source(self, name: str) -> CredentialSource | None:
        for source in self.sources:
            if source.name == name:
                return source
        return None

    def backend_refused(self, user: str) -> defer.Deferred[None]:
        """The server refused a login made for ``user``: every source that can look
        again does (they limit how often)."""
        return defer.gatherResults([source.refresh(user) for source in self.sources],
                                   consumeErrors=True).addCallback(lambda _: None)
