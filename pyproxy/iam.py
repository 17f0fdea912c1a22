"""IAM: tokens clients log in with, verified by AWS STS; RDS tokens pyproxy logs in with.

A client's token is a presigned STS ``GetCallerIdentity`` request, the form
HashiCorp Vault's AWS auth method and the EKS IAM authenticator verify: the
client signs the request with its own credentials and does not send it;
pyproxy sends it to STS, and STS answers with the ARN of whoever signed it
(or refuses a signature that is wrong).  No secret leaves the client and
pyproxy needs no AWS permission to check it.  Before sending, pyproxy checks
what it can itself: the request goes to an STS endpoint it trusts, asks for
GetCallerIdentity and nothing else, has the ``x-pyproxy-audience`` header
signed into it with ``[iam] audience`` as value (so that a token made for
another service that verifies such requests is refused here, and the other
way round), and is not past its ``X-Amz-Date`` + ``X-Amz-Expires`` (at most
15 minutes) on pyproxy's clock.  The verified ARN (a role, any of its
assumed-role sessions, or a user) is then looked up in ``[[iam.roles]]``.

The token is ``pyproxy-v1.`` followed by base64url (unpadded) of the JSON
``{"url": <the presigned URL>, "headers": {<signed headers but host>}}``;
:func:`make_token` (and ``pyproxy-token``) writes it.

RDS's own ``generate_db_auth_token`` is a presigned request too, but of the
``rds-db:connect`` action, which only RDS can check; pyproxy cannot verify
one, and so does not accept them from clients.  It makes them for itself
(:class:`RdsTokens`) when ``[backend] iam`` logs it in to an RDS database.

Every rejection has a reason of its own (:data:`REASONS`) for the log; no
token, signature or key id is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import collections
import hashlib
import json
import re
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from pyproxy.aws import RunInThread
from pyproxy.config import IamRoleConfig

TOKEN_PREFIX = "pyproxy-v1."
AUDIENCE_HEADER = "x-pyproxy-audience"
#: A token is good for 15 minutes at most, whatever X-Amz-Expires says, as RDS's are.
MAX_TOKEN_AGE = 900
#: How far in the future X-Amz-Date may be (clocks differ).
CLOCK_SKEW = 300
#: Tokens longer than this are refused before any parsing.
MAX_TOKEN_LENGTH = 8192

MALFORMED = "iam_token_malformed"
UNTRUSTED_ENDPOINT = "iam_untrusted_endpoint"
NOT_GET_CALLER_IDENTITY = "iam_not_get_caller_identity"
WRONG_AUDIENCE = "iam_wrong_audience"
EXPIRED = "iam_token_expired"
NOT_YET_VALID = "iam_token_not_yet_valid"
SIGNATURE_REFUSED = "iam_signature_refused"
STS_UNAVAILABLE = "iam_sts_unavailable"
UNMAPPED = "iam_identity_unmapped"
REASONS = (MALFORMED, UNTRUSTED_ENDPOINT, NOT_GET_CALLER_IDENTITY, WRONG_AUDIENCE, EXPIRED,
           NOT_YET_VALID, SIGNATURE_REFUSED, STS_UNAVAILABLE, UNMAPPED)

#: AWS's STS endpoints, global and regional (China's too), https only: the
#: endpoints trusted when [iam] sts_endpoints is empty.
AWS_STS_HOST = re.compile(r"sts(\.[a-z]{2}(-gov)?-[a-z]+-\d)?\.amazonaws\.com(\.cn)?")

_DATE = re.compile(r"\d{8}T\d{6}Z")
_QUERY_KEYS = {"Action", "Version", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date",
               "X-Amz-Expires", "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token"}
_REQUIRED_KEYS = _QUERY_KEYS - {"X-Amz-Security-Token"}


class TokenRejected(Exception):
    """A token refused: ``reason`` is one of REASONS; ``detail`` says more
    (an STS error code, the unmapped ARN) and never holds the token."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@attrs.frozen
class SignedRequest:
    """A decoded token: the presigned URL and the headers signed besides host."""

    url: str
    headers: dict[str, str]


# -- making tokens ----------------------------------------------------------

def encode_token(url: str, headers: dict[str, str]) -> str:
    body = json.dumps({"url": url, "headers": headers}, separators=(",", ":")).encode()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")


def make_token(audience: str = "pyproxy", *, session: Any = None, region: str | None = None,
               endpoint_url: str | None = None, expires_in: int = MAX_TOKEN_AGE) -> str:
    """A token for pyproxy, signed with the caller's AWS credentials (boto3's usual
    chain, or ``session``'s); nothing is sent anywhere.

    Args:
        audience: pyproxy's ``[iam] audience``.
        region: of the STS endpoint to sign for (default: the session's region).
        endpoint_url: an STS endpoint pyproxy trusts ([iam] sts_endpoints), when
            not AWS's regional one.
    """
    import boto3

    session = session or boto3.session.Session()
    sts = session.client("sts", region_name=region, endpoint_url=endpoint_url)

    def add_audience(request: Any, **_: Any) -> None:
        request.headers[AUDIENCE_HEADER] = audience

    sts.meta.events.register("before-sign.sts.GetCallerIdentity", add_audience)
    url = sts.generate_presigned_url("get_caller_identity", Params={}, ExpiresIn=expires_in,
                                     HttpMethod="GET")
    return encode_token(url, {AUDIENCE_HEADER: audience})


# -- checking tokens --------------------------------------------------------

def decode_token(token: str) -> SignedRequest:
    """Raises TokenRejected(MALFORMED) for anything but a well-formed token."""
    if len(token) > MAX_TOKEN_LENGTH or not token.startswith(TOKEN_PREFIX):
        raise TokenRejected(MALFORMED, "not a pyproxy token")
    body = token[len(TOKEN_PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # [[[[... nests past the stack
        raise TokenRejected(MALFORMED, "not base64url JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        raise TokenRejected(MALFORMED, "no url")
    headers = data.get("headers", {})
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise TokenRejected(MALFORMED, "headers are not strings")
    return SignedRequest(data["url"], {k.lower(): v for k, v in headers.items()})


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


def trusted(url: str, endpoints: Sequence[str]) -> bool:
    """Whether ``url`` goes to one of ``endpoints``, or, when there are none, to one of
    AWS's STS endpoints over https."""
    try:
        origin = _origin(url)
    except ValueError:
        return False
    if endpoints:
        return origin in {_origin(endpoint) for endpoint in endpoints}
    scheme, hostport = origin
    return scheme == "https" and hostport.endswith(":443") and bool(
        AWS_STS_HOST.fullmatch(hostport[:-4]))


def check_request(request: SignedRequest, *, endpoints: Sequence[str], audience: str,
                  now: float) -> None:
    """What pyproxy checks itself before asking STS.

    Raises:
        TokenRejected: MALFORMED, UNTRUSTED_ENDPOINT, NOT_GET_CALLER_IDENTITY,
            WRONG_AUDIENCE, EXPIRED or NOT_YET_VALID.
    """
    if not trusted(request.url, endpoints):
        raise TokenRejected(UNTRUSTED_ENDPOINT, "the request does not go to a trusted STS endpoint")
    parts = urlsplit(request.url)
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise TokenRejected(MALFORMED, "bad query string") from None
    query = dict(pairs)
    if len(query) != len(pairs) or not _REQUIRED_KEYS <= set(query) <= _QUERY_KEYS:
        raise TokenRejected(MALFORMED, "the query is not a presigned request's")
    if parts.path not in ("", "/") or parts.fragment or query["Action"] != "GetCallerIdentity" \
            or query["Version"] != "2011-06-15":
        raise TokenRejected(NOT_GET_CALLER_IDENTITY, "the request is not GetCallerIdentity")
    if query["X-Amz-Algorithm"] != "AWS4-HMAC-SHA256":
        raise TokenRejected(MALFORMED, "not signed with AWS4-HMAC-SHA256")
    signed = query["X-Amz-SignedHeaders"].split(";")
    if set(signed) != {"host", *request.headers} or "host" in request.headers:
        raise TokenRejected(MALFORMED, "the signed headers and the token's headers differ")
    if AUDIENCE_HEADER not in request.headers:
        raise TokenRejected(WRONG_AUDIENCE, f"{AUDIENCE_HEADER} is not signed")
    if request.headers[AUDIENCE_HEADER] != audience:
        raise TokenRejected(WRONG_AUDIENCE, f"{AUDIENCE_HEADER} is not {audience!r}")
    date, expires = query["X-Amz-Date"], query["X-Amz-Expires"]
    if not _DATE.fullmatch(date) or not expires.isdigit():
        raise TokenRejected(MALFORMED, "bad X-Amz-Date or X-Amz-Expires")
    try:
        signed_at = calendar.timegm(time.strptime(date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        raise TokenRejected(MALFORMED, "bad X-Amz-Date") from None
    if now > signed_at + min(int(expires), MAX_TOKEN_AGE):
        raise TokenRejected(EXPIRED, f"signed at {date}")
    if signed_at > now + CLOCK_SKEW:
        raise TokenRejected(NOT_YET_VALID, f"signed at {date}")


def caller_arn(status: int, body: bytes) -> str:
    """The ARN in STS's answer.

    Raises:
        TokenRejected: SIGNATURE_REFUSED when STS refused the request (4xx: a bad
            signature, an unknown or expired key), STS_UNAVAILABLE otherwise.
    """
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        root = None
    if status == 200 and root is not None:
        arn = root.findtext("./{*}GetCallerIdentityResult/{*}Arn")
        if arn:
            return arn.strip()
    code = root.findtext(".//{*}Error/{*}Code") if root is not None else None
    if 400 <= status < 500:
        raise TokenRejected(SIGNATURE_REFUSED, code or f"HTTP {status}")
    raise TokenRejected(STS_UNAVAILABLE, code or f"HTTP {status}")


_ARN = re.compile(r"arn:(?P<partition>[a-z0-9-]+):(?P<service>iam|sts)::(?P<account>\d{12}):"
                  r"(?P<kind>role|user|assumed-role)/(?P<rest>.+)")


def principal(arn: str) -> tuple[str, str, str, str] | None:
    """(partition, account, "role" or "user", name) of a role, an assumed-role
    session of it, or a user; None for anything else (federated users, roots).
    Paths are left out: names are unique in an account."""
    match = _ARN.fullmatch(arn)
    if match is None:
        return None
    kind, rest = match["kind"], match["rest"]
    if kind == "assumed-role":
        if match["service"] != "sts" or "/" not in rest:
            return None
        return match["partition"], match["account"], "role", rest.split("/", 1)[0]
    if match["service"] != "iam":
        return None
    return match["partition"], match["account"], kind, rest.rsplit("/", 1)[-1]


Sender = Callable[[str, dict[str, str]], "defer.Deferred[tuple[int, bytes]]"]


@attrs.define(eq=False)
class TokenVerifier:
    """Checks clients' tokens (a pyproxy.credential_sources.TokenCheck).

    Args:
        roles: ``[[iam.roles]]``.
        send: sends a GET with headers and fires with (status, body), off the
            reactor thread (:func:`botocore_sender`).
        clock: pyproxy's clock, for the expiry.
        endpoints: ``[iam] sts_endpoints``; empty for AWS's.
        cache_size: verified tokens remembered until they expire, so a client
            that reconnects with the same token does not cost an STS call.
    """

    roles: Sequence[IamRoleConfig]
    send: Sender
    clock: IReactorTime
    audience: str = "pyproxy"
    endpoints: Sequence[str] = ()
    cache_size: int = 4096
    _principals: dict[tuple[str, str, str, str], set[str]] = attrs.field(init=False)
    _verified: collections.OrderedDict[bytes, tuple[str, float]] = attrs.field(
        factory=collections.OrderedDict, init=False)

    def __attrs_post_init__(self) -> None:
        self._principals = {}
        for role in self.roles:
            key = principal(role.arn)
            if key is not None:
                self._principals.setdefault(key, set()).add(role.user)

    def maps(self, user: str) -> bool:
        return any(user in users for users in self._principals.values())

    def verify(self, token: str, user: str) -> defer.Deferred[str]:
        """Fires with the verified ARN if it may log in as ``user``; fails with
        TokenRejected otherwise."""
        try:
            request = decode_token(token)
            now = self.clock.seconds()
            check_request(request, endpoints=self.endpoints, audience=self.audience, now=now)
        except TokenRejected as exc:
            return defer.fail(exc)
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None and now < cached[1]:
            return defer.maybeDeferred(self._mapped, cached[0], user)
        d = self.send(request.url, request.headers)
        d.addCallbacks(lambda answer: caller_arn(*answer), self._unavailable)
        d.addCallback(self._remember, digest, request)
        return d.addCallback(self._mapped, user)

    @staticmethod
    def _unavailable(failure: Any) -> str:
        raise TokenRejected(STS_UNAVAILABLE, type(failure.value).__name__)

    def _remember(self, arn: str, digest: bytes, request: SignedRequest) -> str:
        query = dict(parse_qsl(urlsplit(request.url).query))
        signed_at = calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
        self._verified[digest] = (arn, signed_at + min(int(query["X-Amz-Expires"]), MAX_TOKEN_AGE))
        while len(self._verified) > self.cache_size:
            self._verified.popitem(last=False)
        return arn

    def _mapped(self, arn: str, user: str) -> str:
        key = principal(arn)
        if key is None or user not in self._principals.get(key, ()):
            raise TokenRejected(UNMAPPED, arn)
        return arn


def botocore_sender(run_in_thread: RunInThread[Any], timeout: float = 10.0,
                    max_body: int = 65536) -> Sender:
    """Sends the presigned request with botocore's own HTTP client, in a thread.

    botocore rather than twisted.web's Agent: https then needs nothing beyond
    boto3 (Agent would need pyOpenSSL and service_identity), and the request
    goes out with botocore's CA bundle and proxy settings, as pyproxy's other
    AWS calls do.
    """
    from botocore.awsrequest import AWSRequest
    from botocore.httpsession import URLLib3Session

    session = URLLib3Session(timeout=timeout)

    def call(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        response = session.send(AWSRequest(method="GET", url=url, headers=headers).prepare())
        return response.status_code, response.content[:max_body]

    return lambda url, headers: run_in_thread(lambda: call(url, headers))


# -- pyproxy's own logins to RDS --------------------------------------------

#: RDS tokens last 15 minutes; a new one is made this long before.
RDS_TOKEN_LIFETIME = 900
RDS_TOKEN_MARGIN = 120


@attrs.define(eq=False)
class RdsTokens:
    """``[backend] iam``: RDS IAM tokens for pyproxy's logins to the server, one
    per user, made again before their 15 minutes run out.

    Making one is local to boto3 (a signature), but finding credentials may
    ask the instance metadata service, so it runs in a thread.

    Args:
        make_client: the boto3 RDS client (pyproxy.aws.client("rds", ...)).
    """

    make_client: Callable[[], Any]
    host: str
    port: int
    run_in_thread: RunInThread[Any]
    clock: IReactorTime
    region: str | None = None
    _client: Any = None
    _tokens: dict[str, tuple[str, float]] = attrs.field(factory=dict)

    def token(self, user: str) -> defer.Deferred[str]:
        cached = self._tokens.get(user)
        now = self.clock.seconds()
        if cached is not None and now < cached[1]:
            return defer.succeed(cached[0])
        d = self.run_in_thread(lambda: self._generate(user))
        return d.addCallback(self._keep, user, now)

    def _generate(self, user: str) -> str:
        if self._client is None:
            self._client = self.make_client()
        return str(self._client.generate_db_auth_token(
            DBHostname=self.host, Port=self.port, DBUsername=user, Region=self.region))

    def _keep(self, token: str, user: str, made_at: float) -> str:
        self._tokens[user] = (token, made_at + RDS_TOKEN_LIFETIME - RDS_TOKEN_MARGIN)
        return token
