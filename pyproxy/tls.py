"""TLS on both sides: the certificate pyproxy shows clients, the servers it trusts,
and the RSA key pair of caching_sha2_password's exchange without TLS.

Towards clients (``[tls]``): :class:`ServerTLS` holds the certificate and key
pyproxy presents after a client's SSLRequest, as a Twisted context factory
handed to ``transport.startTLS``.  SIGHUP reads the files again; a pair that
does not load (unreadable, not PEM, a key that does not match) leaves the
running one in place, so a bad rotation never stops new logins.

Towards the server (``[backend] tls``): :func:`backend_tls` makes the
client-side options of one server, verified against ``[backend] ca`` (or
the system's CAs) and the server's name (``server_name``, else the target's
host; an IP address is checked against the certificate's IP addresses).

:class:`RsaKeys` is the pair a client without TLS asks for (0x02) to send its
password encrypted in caching_sha2_password's full authentication; pyproxy
makes its own at start.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from OpenSSL import SSL
from twisted.internet import ssl

_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


class TLSConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file
    and what is wrong, never the key's content."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TLSConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def _certificates(pem: bytes, path: str, what: str) -> list[ssl.Certificate]:
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise TLSConfigError(f"{what} {path} holds no PEM certificate")
    try:
        return [ssl.Certificate.loadPEM(block) for block in blocks]
    except Exception as exc:  # noqa: BLE001 - pyOpenSSL raises its own error types
        raise TLSConfigError(f"{what} {path} is not a valid certificate: {exc}") from None


def _describe(exc: BaseException) -> str:
    """An OpenSSL error as one short line."""
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        return "; ".join(str(reason[2]) for reason in exc.args[0] if len(reason) == 3) or str(exc)
    return str(exc) or type(exc).__name__


def describe_tls_failure(reason: Any) -> str:
    """Why a connection that started TLS ended before its login did, in one line
    (a Failure from connectionLost): the certificate did not verify, the name
    did not match, the peer closed."""
    value = getattr(reason, "value", reason)
    if isinstance(value, SSL.Error):
        return _describe(value)
    if type(value).__name__ == "VerificationError":
        return f"the certificate does not name the server ({value})"
    message = reason.getErrorMessage() if hasattr(reason, "getErrorMessage") else str(reason)
    return message or type(value).__name__


@attrs.define(eq=False)
class ServerTLS:
    """What pyproxy presents to clients: ``cert`` (the leaf first, then any
    intermediates) and ``key``, as the context factory ``startTLS`` takes."""

    cert: str
    key: str
    options: Any = attrs.field(repr=False)
    # The leaf certificate's subject and expiry, for the log lines.
    subject: str = ""
    not_after: str = ""

    @classmethod
    def load(cls, cert: str, key: str) -> ServerTLS:
        """Reads and checks the pair now, so that a bad one is reported here
        rather than at a client's handshake.

        Raises:
            TLSConfigError: a file cannot be read, holds no PEM, or the key does
                not match the certificate.
        """
        chain = _certificates(_read(cert, "[tls] cert"), cert, "[tls] cert")
        key_pem = _read(key, "[tls] key")
        try:
            private = serialization.load_pem_private_key(key_pem, password=None)
        except Exception:  # noqa: BLE001 - the message would not help and might quote the file
            raise TLSConfigError(f"[tls] key {key} is not a PEM private key") from None
        options = ssl.CertificateOptions(
            privateKey=private, certificate=chain[0].original.to_cryptography(),
            extraCertChain=[extra.original.to_cryptography() for extra in chain[1:]],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        try:
            # Builds the context now: a key that does not match fails here.
            options.getContext()
        except SSL.Error as exc:
            raise TLSConfigError(f"[tls] key {key} does not match [tls] cert {cert}: {_describe(exc)}") from None
        leaf = chain[0].original.to_cryptography()
        return cls(cert, key, options, leaf.subject.rfc4514_string(),
                   leaf.not_valid_after_utc.isoformat())


@attrs.frozen
class BackendTLS:
    """How pyproxy's connections to one server start TLS: the name its certificate
    must carry, and the Twisted client options that verify it."""

    server_name: str
    options: Any = attrs.field(eq=False, repr=False)


def _trust_root(ca: str) -> Any:
    if not ca:
        return ssl.platformTrust()
    certificates = _certificates(_read(ca, "[backend] ca"), ca, "[backend] ca")
    return ssl.trustRootFromCertificates(certificates)


def backend_tls(ca: str, server_name: str) -> BackendTLS:
    """Client-side TLS to a server named ``server_name``, trusting the CAs in
    ``ca`` ("" = the system's).

    Raises:
        TLSConfigError: the CA file cannot be read or holds no certificate.
    """
    options = ssl.optionsForClientTLS(server_name, trustRoot=_trust_root(ca),
                                      extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_2})
    return BackendTLS(server_name, options)


class BackendTLSCache:
    """One :class:`BackendTLS` per server name for a ``[backend]`` configuration,
    so that the CA file is read once per configuration, not per connection."""

    __slots__ = ("mode", "ca", "server_name", "_made")

    def __init__(self, mode: str, ca: str, server_name: str) -> None:
        self.mode = mode
        self.ca = ca
        self.server_name = server_name
        self._made: dict[str, BackendTLS] = {}
        if mode == "verify":
            _trust_root(ca)  # a bad CA file is reported now, not at the first connection

    def for_host(self, host: str) -> BackendTLS | None:
        """The options for a server at ``host``; None when [backend] tls is off."""
        if self.mode != "verify":
            return None
        name = self.server_name or host
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = backend_tls(self.ca, name)
        return made


class RsaKeys:
    """An RSA key pair for caching_sha2_password's full authentication without
    TLS: the client asks for the public key (0x02) and sends its password XORed
    with the nonce, encrypted with it (OAEP, as MySQL 8 clients do)."""

    __slots__ = ("_private", "public_pem")

    def __init__(self, bits: int = 2048) -> None:
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        self.public_pem = self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def decrypt_password(self, data: bytes, nonce: bytes) -> bytes | None:
        """The clear password (without its NUL) from a client's encrypted reply,
        or None when it does not decrypt."""
        try:
            plain = self._private.decrypt(data, padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        except ValueError:
            return None
        nonce = nonce[:20]
        clear = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(plain))
        return clear[:-1] if clear.endswith(b"\x00") else clear


#: Seconds a client that runs TLS has to answer pyproxy's close_notify before its
#: TCP connection is aborted.
CLOSE_GRACE = 5.0


def close_client(transport: Any) -> None:
    """Closes a client connection after what was written to it.

    Over TLS, pyproxy's producer is unregistered first: Twisted's TLS layer
    sends its close_notify only once no producer is registered, and would
    otherwise wait for ever.  A client that does not answer the close_notify
    (and close) within CLOSE_GRACE seconds has its connection aborted, so a
    closed client never holds a socket.
    """
    if not getattr(transport, "TLS", False):
        transport.loseConnection()
        return
    if not transport.connected:
        return
    transport.unregisterProducer()
    transport.loseConnection()
    from twisted.internet import reactor  # noqa: PLC0415 - only for clients over TLS

    def abort() -> None:
        if transport.connected:
            transport.abortConnection()

    reactor.callLater(CLOSE_GRACE, abort)  # type: ignore[attr-defined]
