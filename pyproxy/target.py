"""Where and as whom a backend connection logs in: one immutable value per server and user,
built by Proxy.target from the config and the credentials a client's login gave."""

from __future__ import annotations

from typing import Any

import attrs

from pyproxy.credential_sources import BackendLogin


@attrs.frozen
class Target:
    """Where and as whom backend connections log in."""

    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)
    database: str | None = None
    charset: int = 45
    connect_timeout: float = 10.0
    # Prepared statements kept per connection (least recently used closed first).
    statement_cache: int = 256
    init_query: str = ""
    # How to log in when it is not ``password``: what a client's login gave
    # (SHA1(password) recovered from its proof against a stored hash, the
    # passwords of a Secrets Manager secret, an RDS IAM login), kept for this
    # user's connections only (pyproxy.proxy.Proxy.target).
    login: BackendLogin | None = attrs.field(default=None, repr=False)
    # Which of ``login.passwords`` this connection tries (a rotation has two).
    attempt: int = 0
    # The RDS IAM token of an ``login.iam`` login.
    token: str = attrs.field(default="", repr=False)
    # TLS to this server (a pyproxy.tls.BackendTLS), or None for plaintext.
    tls: Any = attrs.field(default=None, repr=False)
