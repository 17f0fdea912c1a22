"""A moto server on loopback, standing in for AWS: pyproxy's AWS code runs unchanged, with
``[aws] endpoint_url`` pointing here.  Nothing in the tests reaches the internet.

moto finds the service a request is for, and the caller's access key, in its Authorization
header.  A presigned request (an IAM token) has none: its credential scope is in the query
string, and moto would take it for an S3 request.  So the server here is moto's own WSGI
application behind one shim, :func:`presigned_as_header`, which copies a presigned request's
X-Amz-Credential, SignedHeaders and Signature into an Authorization header before moto sees
it; every other request passes untouched.  Then moto's STS answers GetCallerIdentity with
the identity of the key that signed (an assumed role's session for keys from its AssumeRole).

What moto still does not do (README's "Security" section says it too): it checks no
signature, so a tampered token gets the same answer as a good one (integration/sts_stub.py
checks them instead), and it does not look at a presigned request's expiry (pyproxy does).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from pyproxy.config import AwsConfig
from pyproxy.sandbox import free_port

REGION = "eu-west-1"
ACCOUNT = "123456789012"  # moto's default account

#: Fake credentials only: boto3 must find some, and must never find real ones.
ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "AKIAPYPROXYTESTS0001",
    "AWS_SECRET_ACCESS_KEY": "pyproxy-tests-not-a-real-secret",
    "AWS_SESSION_TOKEN": "",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def presigned_as_header(app: Callable[..., Any]) -> Callable[..., Any]:
    """WSGI middleware: a presigned request's query-string auth, copied into the
    Authorization header moto routes by (the signature is copied as it is, unchecked)."""
    def shim(environ: dict[str, Any], start_response: Any) -> Any:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "HTTP_AUTHORIZATION" not in environ and "X-Amz-Credential" in query:
            environ["HTTP_AUTHORIZATION"] = (
                f"AWS4-HMAC-SHA256 Credential={query['X-Amz-Credential'][0]}, "
                f"SignedHeaders={query.get('X-Amz-SignedHeaders', [''])[0]}, "
                f"Signature={query.get('X-Amz-Signature', [''])[0]}")
            if "X-Amz-Security-Token" in query:
                environ["HTTP_X_AMZ_SECURITY_TOKEN"] = query["X-Amz-Security-Token"][0]
        return app(environ, start_response)
    return shim


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's server application on a free 127.0.0.1 port, in a thread, behind
    :func:`presigned_as_header`; stopped on exit; yields its URL."""
    werkzeug_app = pytest.importorskip("moto.moto_server.werkzeug_app")
    from werkzeug.serving import make_server

    with pytest.MonkeyPatch.context() as patch:
        for name, value in ENVIRONMENT.items():
            if value:
                patch.setenv(name, value)
            else:
                patch.delenv(name, raising=False)
        app = werkzeug_app.DomainDispatcherApplication(werkzeug_app.create_backend_app)
        server = make_server("127.0.0.1", free_port(), presigned_as_header(app), threaded=True)
        thread = threading.Thread(target=server.serve_forever, name="moto", daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(10)


def aws_config(url: str) -> AwsConfig:
    return AwsConfig(region=REGION, endpoint_url=url)
