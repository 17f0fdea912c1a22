"""A stand-in for STS that checks presigned GetCallerIdentity signatures, as moto does not.

moto answers a presigned request with its default identity whatever signed it (see
integration/moto.py), so a test against it cannot tell a tampered token from a good one.  This
small HTTP server on loopback does what STS does with such a request: it computes the SigV4
query signature again, with botocore, from the secret key of the access key id the request
names and the headers it received, and answers 403 SignatureDoesNotMatch (or
InvalidClientTokenId for an unknown key) when it differs, else the XML STS sends with the ARN
it has for that key.  It does not check expiry: pyproxy must.
"""

from __future__ import annotations

import contextlib
import hmac
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit

from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

_SIGNING = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
            "X-Amz-SignedHeaders", "X-Amz-Signature", "X-Amz-Security-Token")

IDENTITY = """<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<GetCallerIdentityResult><Arn>{arn}</Arn><UserId>AROASTUB:session</UserId>
<Account>{account}</Account></GetCallerIdentityResult>
<ResponseMetadata><RequestId>stub</RequestId></ResponseMetadata></GetCallerIdentityResponse>"""
ERROR = """<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><Error><Type>Sender</Type>
<Code>{code}</Code><Message>refused by the stand-in</Message></Error><RequestId>stub</RequestId>
</ErrorResponse>"""


def expected_signature(url: str, headers: Mapping[str, str], secret_key: str) -> str:
    """The SigV4 query signature of a GET of ``url`` carrying ``headers``, as the signer of
    the access key id named in it would have made it with ``secret_key``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    access_key, _, region, service, _ = query["X-Amz-Credential"].split("/")
    signed = query["X-Amz-SignedHeaders"].split(";")
    unsigned_url = parts._replace(query=urlencode(
        [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _SIGNING])).geturl()
    request = AWSRequest(method="GET", url=unsigned_url,
                         headers={name: headers[name] for name in signed if name != "host"})
    request.context["timestamp"] = query["X-Amz-Date"]
    signer = SigV4QueryAuth(Credentials(access_key, secret_key, query.get("X-Amz-Security-Token")),
                            service, region, expires=int(query["X-Amz-Expires"]))
    signer._modify_request_before_signing(request)
    return str(signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request))


class StsStub(ThreadingHTTPServer):
    """``keys``: access key id -> (secret access key, the ARN STS would answer)."""

    daemon_threads = True

    def __init__(self, keys: Mapping[str, tuple[str, str]]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.keys = dict(keys)
        self.requests = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: StsStub

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.requests += 1
        query = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        access_key = query.get("X-Amz-Credential", "").split("/")[0]
        known = self.server.keys.get(access_key)
        if known is None or query.get("Action") != "GetCallerIdentity":
            self._answer(403, ERROR.format(code="InvalidClientTokenId"))
            return
        secret_key, arn = known
        headers = {name.lower(): value for name, value in self.headers.items()}
        url = f"http://{headers['host']}{self.path}"
        try:
            good = hmac.compare_digest(expected_signature(url, headers, secret_key),
                                       query.get("X-Amz-Signature", ""))
        except (KeyError, ValueError):
            good = False
        if not good:
            self._answer(403, ERROR.format(code="SignatureDoesNotMatch"))
            return
        self._answer(200, IDENTITY.format(arn=arn, account=arn.split(":")[4]))

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def sts_stub(keys: Mapping[str, tuple[str, str]]) -> Iterator[StsStub]:
    server = StsStub(keys)
    thread = threading.Thread(target=server.serve_forever, name="sts-stub", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
