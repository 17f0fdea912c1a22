"""pyproxy.credentials: the configured users as a credential source."""

from __future__ import annotations

from pyproxy import auth
from pyproxy.config import build
from pyproxy.credentials import Checked, ConfiguredUsers

NONCE = bytes(range(1, 21))


class Holder:
    """What ConfiguredUsers reads: the running configuration, replaced by a reload."""

    def __init__(self, users: list[dict[str, str]]) -> None:
        self.config = build({"users": users})


def test_configured_users_check_the_proof() -> None:
    """A known user's right proof is accepted, a wrong one refused, for either plugin
    offered to clients; an unknown user is told apart (for the log only)."""
    users = ConfiguredUsers(Holder([{"name": "app", "password": "secret"}, {"name": "nopw", "password": ""}]))
    for plugin in auth.CLIENT_PLUGINS:
        proof = auth.proof_for(plugin, b"secret", NONCE)
        assert users.check("app", plugin, NONCE, proof) is Checked.ACCEPTED
        assert users.check("app", plugin, NONCE, auth.proof_for(plugin, b"wrong", NONCE)) is Checked.REFUSED
        assert users.check("ghost", plugin, NONCE, proof) is Checked.UNKNOWN_USER
    assert users.check("nopw", auth.NATIVE, NONCE, b"") is Checked.ACCEPTED


def test_a_reload_applies_to_the_next_check() -> None:
    """The users are read from the configuration at each check, not copied."""
    holder = Holder([{"name": "app", "password": "secret"}])
    users = ConfiguredUsers(holder)
    proof = auth.native_proof(b"secret", NONCE)
    assert users.check("app", auth.NATIVE, NONCE, proof) is Checked.ACCEPTED
    holder.config = build({"users": [{"name": "app", "password": "changed"}]})
    assert users.check("app", auth.NATIVE, NONCE, proof) is Checked.REFUSED
