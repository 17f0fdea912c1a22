"""Where a client's proof is checked: the Credentials interface, and the configured users.

The login phase (pyproxy.login) asks one question, through Credentials only:
does this proof, made with this plugin over this nonce, prove this user?
Today the answer comes from the ``[[users]]`` of the running configuration.
Another source (password hashes, a lookup on the server, IAM tokens) is one
more class with the same method; the login phase does not change.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

from pyproxy import auth


class Checked(enum.Enum):
    """What a credential source says of a proof."""

    ACCEPTED = "accepted"
    # A user the source knows, with a proof that does not match.
    REFUSED = "refused"
    # A user the source does not know (logged, never told to the client).
    UNKNOWN_USER = "unknown user"
    # A user the source knows but whose proof it cannot check (it holds only
    # the stored hash, which checks no caching_sha2_password scramble): the
    # login asks for the password itself (caching_sha2's full authentication).
    NEEDS_PASSWORD = "needs password"


class Credentials(Protocol):
    """A source of the accounts clients may log in as."""

    def check(self, user: str, plugin: str, nonce: bytes, proof: bytes) -> Checked:
        """Whether ``proof``, made by the client with ``plugin`` over ``nonce``,
        proves ``user``.  ``plugin`` is one of auth.CLIENT_PLUGINS, or
        auth.CLEAR with the password itself as ``proof`` (sent over TLS or
        RSA-encrypted)."""
        ...


class ConfiguredUsers:
    """The ``[[users]]`` of the running configuration, looked up at each check:
    a reload (SIGHUP) that changes them applies to the next login."""

    __slots__ = ("_proxy",)

    def __init__(self, proxy: Any) -> None:
        # Anything with the running configuration as ``config`` (a pyproxy.proxy.Proxy).
        self._proxy = proxy

    def check(self, user: str, plugin: str, nonce: bytes, proof: bytes) -> Checked:
        account = self._proxy.config.user(user)
        if account is None:
            return Checked.UNKNOWN_USER
        if account.password_hash and not account.password:
            stage2 = auth.parse_stored_hash(account.password_hash)
            if plugin == auth.CLEAR:
                return Checked.ACCEPTED if auth.verify_clear_hash(stage2, proof) else Checked.REFUSED
            if plugin == auth.CACHING_SHA2:
                return Checked.NEEDS_PASSWORD
            return Checked.REFUSED
        if auth.verify(plugin, account.password.encode(), nonce, proof):
            return Checked.ACCEPTED
        return Checked.REFUSED
