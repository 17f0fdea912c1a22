"""pyproxy.credential_sources: which plugins a user's secret can check, verdicts, and the chain of sources."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import auth
from pyproxy.config import UserConfig
from pyproxy.credential_sources import (
    CLEAR_TEXT_WITHOUT_TLS,
    NO_BACKEND_CREDENTIAL,
    PLUGIN_NOT_ALLOWED,
    WRONG_PASSWORD,
    BackendLogin,
    ConfigSource,
    Credential,
    Credentials,
    Verdict,
)

NONCE = auth.new_nonce()
SERVER_NONCE = auth.new_nonce()
HASH = auth.stored_hash(b"hashed-pw")
USERS = [UserConfig("app", "app-pw"), UserConfig("hashed", password_hash=HASH), UserConfig("nopw")]
TOKEN = "pyproxy-v1.eyJ0b2tlbiI6dHJ1ZX0"


def result(d: defer.Deferred[Any]) -> Any:
    return SynchronousTestCase().successResultOf(d)


class Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@attrs.define
class FakeTokens:
    """A TokenCheck: TOKEN is role/lambda, which may log in as ``users``."""

    users: tuple[str, ...] = ("app", "iam-only")
    seen: list[tuple[str, str]] = attrs.field(factory=list)

    def maps(self, user: str) -> bool:
        return user in self.users

    def verify(self, token: str, user: str) -> defer.Deferred[str]:
        self.seen.append((token, user))
        if token != TOKEN:
            return defer.fail(Rejected("expired"))
        return defer.succeed("arn:aws:sts::123456789012:assumed-role/lambda/s1")


@attrs.define
class ChangingSource:
    """A source whose secret changes when it looks again (a rotated secret)."""

    passwords: list[tuple[str, ...]]
    name: str = "changing"
    refreshes: int = 0

    def credential(self, user: str) -> defer.Deferred[Credential | None]:
        if user != "rot":
            return defer.succeed(None)
        return defer.succeed(Credential(user, self.name, passwords=self.passwords[0]))

    def refresh(self, user: str) -> defer.Deferred[bool]:
        self.refreshes += 1
        if len(self.passwords) > 1:
            self.passwords.pop(0)
            return defer.succeed(True)
        return defer.succeed(False)


def lookup(user: str, *sources: Any, **kwargs: Any) -> Credential | None:
    return result(Credentials(sources or [ConfigSource(USERS)], **kwargs).credential(user))


def check(credential: Credential, plugin: str, answer: bytes, secure: bool = False,
          **kwargs: Any) -> Verdict:
    return result(Credentials([ConfigSource(USERS)], **kwargs).verify(
        credential, plugin, NONCE, answer, secure=secure))


def test_config_source_passwords_and_hashes() -> None:
    """[[users]] give a password, or a hash (no password then), or "" for an account without
    one; a user not there is None."""
    app, hashed, nopw = (lookup(name) for name in ("app", "hashed", "nopw"))
    assert app is not None and app.passwords == ("app-pw",) and app.hashes == ()
    assert hashed is not None and hashed.passwords == () and hashed.hashes == (auth.parse_stored_hash(HASH),)
    assert nopw is not None and nopw.passwords == ("",)
    assert lookup("ghost") is None
    assert app.source == "config"


def test_plugins_follow_what_is_known() -> None:
    """A password checks every plugin; a hash only mysql_native_password (and clear text);
    an IAM-only user only clear text."""
    assert lookup("app").plugins == (auth.NATIVE, auth.CACHING_SHA2, auth.CLEAR)  # type: ignore[union-attr]
    assert lookup("hashed").plugins == (auth.NATIVE, auth.CLEAR)  # type: ignore[union-attr]
    iam_only = lookup("iam-only", ConfigSource(USERS), iam=FakeTokens())
    assert iam_only is not None and iam_only.plugins == (auth.CLEAR,) and iam_only.source == "iam"


@pytest.mark.parametrize("plugin", [auth.NATIVE, auth.CACHING_SHA2])
def test_password_user_proofs(plugin: str) -> None:
    """A right proof gives a login with the password; a wrong one is refused as such."""
    app = lookup("app")
    assert app is not None
    verdict = check(app, plugin, auth.proof_for(plugin, b"app-pw", NONCE))
    assert verdict.accepted and verdict.login == BackendLogin("app", ("app-pw",))
    assert check(app, plugin, auth.proof_for(plugin, b"app-pW", NONCE)).reason == WRONG_PASSWORD


def test_hash_user_logs_in_to_the_backend_with_the_recovered_sha1() -> None:
    """A hash-only user's native proof gives SHA1(password), whose proof to the server's nonce is
    the password's; caching_sha2_password cannot be checked against a hash."""
    hashed = lookup("hashed")
    assert hashed is not None
    verdict = check(hashed, auth.NATIVE, auth.native_proof(b"hashed-pw", NONCE))
    assert verdict.login == BackendLogin("hashed", native_sha1=hashlib.sha1(b"hashed-pw").digest())
    assert verdict.login.proof(auth.NATIVE, SERVER_NONCE) == auth.native_proof(b"hashed-pw", SERVER_NONCE)
    with pytest.raises(ValueError, match="mysql_native_password only"):
        verdict.login.proof(auth.CACHING_SHA2, SERVER_NONCE)
    assert check(hashed, auth.NATIVE, auth.native_proof(b"other", NONCE)).reason == WRONG_PASSWORD
    sha2 = auth.caching_sha2_proof(b"hashed-pw", NONCE)
    assert check(hashed, auth.CACHING_SHA2, sha2).reason == PLUGIN_NOT_ALLOWED


def test_clear_text_only_over_tls() -> None:
    """mysql_clear_password is refused without TLS; over TLS the password (or one whose hash is
    known, which then becomes the backend password) is accepted, NUL terminator or not."""
    app, hashed = lookup("app"), lookup("hashed")
    assert app is not None and hashed is not None
    assert check(app, auth.CLEAR, b"app-pw\x00").reason == CLEAR_TEXT_WITHOUT_TLS
    assert check(app, auth.CLEAR, b"app-pw\x00", secure=True).login == BackendLogin("app", ("app-pw",))
    assert check(app, auth.CLEAR, b"app-pw", secure=True).accepted
    assert check(app, auth.CLEAR, b"app-p\x00", secure=True).reason == WRONG_PASSWORD
    assert check(hashed, auth.CLEAR, b"hashed-pw\x00", secure=True).login == BackendLogin(
        "hashed", ("hashed-pw",))
    assert check(hashed, auth.CLEAR, b"\x00", secure=True).reason == WRONG_PASSWORD


def test_no_password_account() -> None:
    """An account without password takes the empty proof only."""
    nopw = lookup("nopw")
    assert nopw is not None
    assert check(nopw, auth.NATIVE, b"").login == BackendLogin("nopw", ("",))
    assert check(nopw, auth.NATIVE, auth.native_proof(b"x", NONCE)).reason == WRONG_PASSWORD


def test_iam_tokens_for_mapped_users() -> None:
    """A token (clear text over TLS) is checked by the IAM verifier: accepted with the ARN and
    the configured password for the backend; refused with the verifier's reason; an IAM-only
    user has nothing to log in to the server with unless [backend] iam is on."""
    tokens = FakeTokens()
    app = lookup("app", ConfigSource(USERS), iam=tokens)
    assert app is not None
    verdict = check(app, auth.CLEAR, TOKEN.encode() + b"\x00", secure=True)
    assert verdict.login == BackendLogin("app", ("app-pw",))
    assert verdict.identity.endswith(":assumed-role/lambda/s1")
    assert tokens.seen == [(TOKEN, "app")]
    assert check(app, auth.CLEAR, b"pyproxy-v1.other\x00", secure=True).reason == "expired"
    # Passwords still work for a user that also has IAM.
    assert check(app, auth.NATIVE, auth.native_proof(b"app-pw", NONCE)).accepted
    iam_only = lookup("iam-only", ConfigSource(USERS), iam=tokens)
    assert iam_only is not None
    assert check(iam_only, auth.CLEAR, TOKEN.encode(), secure=True).reason == NO_BACKEND_CREDENTIAL
    by_rds = check(iam_only, auth.CLEAR, TOKEN.encode(), secure=True, backend_iam=True)
    assert by_rds.login == BackendLogin("iam-only", iam=True) and by_rds.identity
    assert check(iam_only, auth.NATIVE, b"x" * 20).reason == PLUGIN_NOT_ALLOWED
    assert lookup("nopw", ConfigSource(USERS), iam=tokens).iam is None  # type: ignore[union-attr]


def test_backend_iam_replaces_every_backend_login() -> None:
    """With [backend] iam, an accepted password login also logs in to the server by token."""
    app = lookup("app")
    assert app is not None
    verdict = check(app, auth.NATIVE, auth.native_proof(b"app-pw", NONCE), backend_iam=True)
    assert verdict.login == BackendLogin("app", iam=True)
    assert verdict.login.proof(auth.CLEAR, SERVER_NONCE, token="tok") == b"tok\x00"
    with pytest.raises(ValueError):
        verdict.login.proof(auth.NATIVE, SERVER_NONCE, token="tok")
    assert check(app, auth.NATIVE, b"x" * 20, backend_iam=True).reason == WRONG_PASSWORD


def test_chain_first_source_that_knows_the_user() -> None:
    """The first source that knows a user answers; later ones are asked only when earlier ones
    know nothing of it."""
    shadow = ConfigSource([UserConfig("app", "other-pw"), UserConfig("extra", "x")], name="second")
    app = lookup("app", ConfigSource(USERS), shadow)
    extra = lookup("extra", ConfigSource(USERS), shadow)
    assert app is not None and app.passwords == ("app-pw",)
    assert extra is not None and extra.source == "second"


def test_wrong_password_is_checked_again_after_the_source_looks_again() -> None:
    """A rotated secret: the client's new password fails against the stale one, the source
    fetches again, and the second check passes; a source that did not look again is not retried."""
    source = ChangingSource([("old-pw",), ("old-pw", "new-pw")])
    credentials = Credentials([source])
    rot = result(credentials.credential("rot"))
    verdict = result(credentials.verify(rot, auth.NATIVE, NONCE, auth.native_proof(b"new-pw", NONCE),
                                        secure=False))
    assert verdict.login == BackendLogin("rot", ("new-pw", "old-pw"))
    assert source.refreshes == 1
    again = result(credentials.verify(rot, auth.NATIVE, NONCE, auth.native_proof(b"bad", NONCE),
                                      secure=False))
    assert again.reason == WRONG_PASSWORD and source.refreshes == 2


def test_backend_refused_asks_every_source() -> None:
    """After the server refuses a login, each source is told to look again."""
    source = ChangingSource([("a",)])
    result(Credentials([ConfigSource(USERS), source]).backend_refused("rot"))
    assert source.refreshes == 1


def test_backend_login_passwords_in_turn() -> None:
    """A login with two passwords (a rotation) answers with the one asked for by attempt."""
    login = BackendLogin("rot", ("one", "two"))
    assert login.attempts == 2
    assert login.proof(auth.NATIVE, SERVER_NONCE, attempt=1) == auth.native_proof(b"two", SERVER_NONCE)
    assert BackendLogin("x").attempts == 1


def test_no_secret_in_any_repr() -> None:
    """Credentials, logins and verdicts never show a password, a hash or a SHA1."""
    hashed, app = lookup("hashed"), lookup("app")
    sha1 = hashlib.sha1(b"hashed-pw").digest()
    text = " ".join(map(repr, [hashed, app, BackendLogin("h", ("app-pw",), sha1),
                               Verdict(BackendLogin("h", native_sha1=sha1))]))
    for secret in ("app-pw", HASH[1:], HASH[1:].lower(), sha1.hex(), repr(sha1)[2:-1],
                   repr(auth.parse_stored_hash(HASH))[2:-1]):
        assert secret not in text


@settings(max_examples=100, deadline=None, database=None)
@given(user=st.sampled_from(["app", "hashed", "nopw", "iam-only"]),
       plugin=st.sampled_from([auth.NATIVE, auth.CACHING_SHA2, auth.CLEAR, auth.ED25519, "dialog", ""]),
       answer=st.binary(max_size=80), secure=st.booleans())
def test_any_answer_gets_a_verdict(user: str, plugin: str, answer: bytes, secure: bool) -> None:
    """Whatever plugin and bytes a client answers with, the check ends in a verdict: accepted,
    or refused with a known reason; never an exception."""
    credentials = Credentials([ConfigSource(USERS)], iam=FakeTokens())
    found = result(credentials.credential(user))
    verdict = result(credentials.verify(found, plugin, NONCE, answer, secure=secure))
    assert verdict.accepted or verdict.reason in (
        WRONG_PASSWORD, PLUGIN_NOT_ALLOWED, CLEAR_TEXT_WITHOUT_TLS, NO_BACKEND_CREDENTIAL, "expired")
