"""pyproxy's AWS code against a moto server on loopback: Secrets Manager, STS, RDS tokens.

The code under test is the production path, boto3 clients built from ``[aws]`` with
``endpoint_url`` pointing at moto, and blocking calls run in a real reactor's thread pool
(integration/own_reactor.py).  What moto cannot check is said where it matters (see
integration/moto.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from structlog.testing import capture_logs

from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.moto import REGION, aws_config, moto_server
from integration.own_reactor import run_until_done
from integration.sts_stub import sts_stub
from pyproxy import auth, aws, iam
from pyproxy.config import IamRoleConfig
from pyproxy.credential_sources import Credentials
from pyproxy.sandbox import free_port
from pyproxy.secrets import SecretsSource

pytestmark = pytest.mark.usefixtures("bounded")


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


def boto(service: str, url: str) -> Any:
    """A client of the test's own, to set moto up."""
    return boto3.client(service, region_name=REGION, endpoint_url=url)


def secret(url: str, name: str, username: str, password: str) -> str:
    created = boto(url=url, service="secretsmanager").create_secret(
        Name=name, SecretString=json.dumps({"username": username, "password": password,
                                            "engine": "mariadb", "host": "db", "port": 3306}))
    return str(created["ARN"])


def secrets_source(reactor: Any, url: str, arns: list[str]) -> SecretsSource:
    config = aws_config(url)
    return SecretsSource(arns, lambda: aws.client("secretsmanager", config), aws.in_thread(reactor),
                         reactor, interval=300)


def test_secrets_fetched_in_threads_and_checked(moto: str) -> None:
    """Two secrets fetched from moto in the reactor's thread pool; clients of both users are
    checked against them, and the fetch logs no password."""
    arns = [secret(moto, "pyproxy/app", "app", "app-secret-1"),
            secret(moto, "pyproxy/reports", "reports", "reports-secret-1")]

    def scenario(reactor: Any) -> Any:
        source = secrets_source(reactor, moto, arns)
        credentials = Credentials([source])
        nonce = auth.new_nonce()

        def check(ok: bool) -> Any:
            assert ok is True
            return credentials.credential("reports").addCallback(
                lambda found: credentials.verify(found, auth.NATIVE, nonce,
                                                 auth.native_proof(b"reports-secret-1", nonce), secure=False))

        return source.start().addCallback(check).addBoth(lambda outcome: (source.stop(), outcome)[1])

    with capture_logs() as logs:
        verdict = run_until_done(scenario)
    assert verdict.login.user == "reports" and verdict.login.passwords == ("reports-secret-1",)
    assert "secret-1" not in repr(logs)


def test_rotation_through_moto(moto: str) -> None:
    """A rotation as Secrets Manager's steps make it: a pending version is accepted beside the
    current one; once it is promoted, the old password is refused after the next fetch."""
    arn = secret(moto, "pyproxy/rotated", "rot", "rot-old")
    client = boto("secretsmanager", moto)
    nonce = auth.new_nonce()

    def accepted(source: SecretsSource, password: bytes) -> Any:
        credentials = Credentials([source])
        return credentials.credential("rot").addCallback(
            lambda found: credentials.verify(found, auth.NATIVE, nonce, auth.native_proof(password, nonce),
                                             secure=False)).addCallback(lambda verdict: verdict.accepted)

    def scenario(reactor: Any) -> Any:
        source = secrets_source(reactor, moto, [arn])
        seen: list[tuple[str, bool]] = []

        def record(ok: bool, label: str) -> None:
            seen.append((label, ok))

        def rotate(_: object) -> Any:
            pending = client.put_secret_value(SecretId=arn, VersionStages=["AWSPENDING"],
                                              SecretString=json.dumps({"username": "rot", "password": "rot-new"}))
            seen.append(("pending_version", bool(pending["VersionId"])))
            return source.fetch()

        def promote(_: object) -> Any:
            versions = client.describe_secret(SecretId=arn)["VersionIdsToStages"]
            current = next(v for v, stages in versions.items() if "AWSCURRENT" in stages)
            pending = next(v for v, stages in versions.items() if "AWSPENDING" in stages)
            client.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT",
                                               MoveToVersionId=pending, RemoveFromVersionId=current)
            client.update_secret_version_stage(SecretId=arn, VersionStage="AWSPENDING",
                                               RemoveFromVersionId=pending)
            return source.fetch()

        d = source.start()
        d.addCallback(lambda _: accepted(source, b"rot-old")).addCallback(record, "old before")
        d.addCallback(lambda _: accepted(source, b"rot-new")).addCallback(record, "new before")
        d.addCallback(rotate)
        d.addCallback(lambda _: accepted(source, b"rot-old")).addCallback(record, "old during")
        d.addCallback(lambda _: accepted(source, b"rot-new")).addCallback(record, "new during")
        d.addCallback(promote)
        d.addCallback(lambda _: accepted(source, b"rot-old")).addCallback(record, "old after")
        d.addCallback(lambda _: accepted(source, b"rot-new")).addCallback(record, "new after")
        return d.addCallback(lambda _: seen).addBoth(lambda outcome: (source.stop(), outcome)[1])

    assert run_until_done(scenario) == [
        ("old before", True), ("new before", False), ("pending_version", True),
        ("old during", True), ("new during", True), ("old after", False), ("new after", True)]


def test_unknown_secret_and_unreachable_endpoint(moto: str) -> None:
    """A secret moto does not have, and an endpoint nobody listens on: no user, a log line with
    the AWS error's code or kind, and the reactor never blocked (it ran them in threads)."""
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:pyproxy/missing-AbCdEf"

    def scenario(reactor: Any, url: str) -> Any:
        source = secrets_source(reactor, url, [missing])
        return source.start().addCallback(lambda ok: (source.stop(), ok)[1])

    with capture_logs() as logs:
        assert run_until_done(lambda reactor: scenario(reactor, moto)) is False
    assert logs[-1]["error"] == "ResourceNotFoundException"
    with capture_logs() as logs:
        assert run_until_done(lambda reactor: scenario(reactor, f"http://127.0.0.1:{free_port()}"),
                              timeout=60) is False
    assert logs[-1]["error"] == "EndpointConnectionError"


# -- IAM tokens ---------------------------------------------------------------

ROLE = "arn:aws:iam::123456789012:role/app-lambda"
KEYS = {"AKIAPYPROXYSTUB00001": ("stub-secret-one", "arn:aws:sts::123456789012:assumed-role/app-lambda/s1"),
        "AKIAPYPROXYSTUB00002": ("stub-secret-two", "arn:aws:sts::123456789012:assumed-role/other/s2")}


def signed_by(access_key: str, endpoint: str, secret_key: str | None = None, **kwargs: Any) -> str:
    session = boto3.session.Session(aws_access_key_id=access_key, region_name=REGION,
                                    aws_secret_access_key=secret_key or KEYS[access_key][0])
    return iam.make_token(session=session, endpoint_url=endpoint, **kwargs)


def verified(endpoint: str, token: str, user: str = "app") -> str:
    """Verifies ``token`` for ``user`` with the production sender (botocore in the reactor's
    threads) against ``endpoint``; the ARN, or the rejection's reason and detail."""
    def scenario(reactor: Any) -> Any:
        verifier = iam.TokenVerifier([IamRoleConfig(ROLE, "app")],
                                     iam.botocore_sender(aws.in_thread(reactor), timeout=5),
                                     reactor, endpoints=[endpoint])
        return verifier.verify(token, user).addErrback(
            lambda failure: f"{failure.trap(iam.TokenRejected) and failure.value.reason}: "
                            f"{failure.value.detail}")
    return str(run_until_done(scenario))


def tampered(token: str) -> str:
    """The token with one hex digit of its signature changed."""
    request = iam.decode_token(token)
    head, _, signature = request.url.rpartition("X-Amz-Signature=")
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    return iam.encode_token(f"{head}X-Amz-Signature={flipped}", request.headers)


def test_iam_token_verified_by_a_signature_checking_sts() -> None:
    """A token signed by a key of the mapped role is accepted with the role's session ARN; the
    same token tampered with, one signed with a wrong secret, and one of another role are
    refused, each for its own reason."""
    with sts_stub(KEYS) as sts:
        good = signed_by("AKIAPYPROXYSTUB00001", sts.url)
        assert verified(sts.url, good) == KEYS["AKIAPYPROXYSTUB00001"][1]
        assert verified(sts.url, tampered(good)) == "iam_signature_refused: SignatureDoesNotMatch"
        forged = signed_by("AKIAPYPROXYSTUB00001", sts.url, secret_key="guessed")
        assert verified(sts.url, forged) == "iam_signature_refused: SignatureDoesNotMatch"
        other = signed_by("AKIAPYPROXYSTUB00002", sts.url)
        assert verified(sts.url, other) == "iam_identity_unmapped: " + KEYS["AKIAPYPROXYSTUB00002"][1]
        unknown = signed_by("AKIAPYPROXYNOBODY001", sts.url, secret_key="x")
        assert verified(sts.url, unknown) == "iam_signature_refused: InvalidClientTokenId"
        # Refused on pyproxy's side, never sent: another audience, an untrusted endpoint.
        before = sts.requests
        assert verified(sts.url, signed_by("AKIAPYPROXYSTUB00001", sts.url, audience="vault")).startswith(
            "iam_wrong_audience")
        assert verified("http://127.0.0.1:1", good).startswith("iam_untrusted_endpoint")
        assert sts.requests == before


def test_iam_token_round_trip_through_moto(moto: str) -> None:
    """A Lambda's view: assume a role with moto's STS, make a token with those credentials by
    the helper, and pyproxy sends it to moto, whose STS answers with that role's session ARN,
    mapped to its user.  The default credentials (not the role) are refused as unmapped.  moto
    checks no signature, so a tampered token is accepted here: signatures are tested against
    integration/sts_stub.py."""
    iam_client = boto("iam", moto)
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    role = iam_client.create_role(RoleName="app-lambda", AssumeRolePolicyDocument=trust)["Role"]
    assert role["Arn"] == ROLE
    assumed = boto("sts", moto).assume_role(RoleArn=ROLE, RoleSessionName="fn-1")["Credentials"]
    session = boto3.session.Session(aws_access_key_id=assumed["AccessKeyId"],
                                    aws_secret_access_key=assumed["SecretAccessKey"],
                                    aws_session_token=assumed["SessionToken"], region_name=REGION)
    token = iam.make_token(session=session, endpoint_url=moto)
    session_arn = "arn:aws:sts::123456789012:assumed-role/app-lambda/fn-1"
    assert verified(moto, token) == session_arn
    assert verified(moto, token, user="reports") == "iam_identity_unmapped: " + session_arn
    default = iam.make_token(region=REGION, endpoint_url=moto)
    assert verified(moto, default).startswith("iam_identity_unmapped: arn:aws:")
    assert verified(moto, tampered(token)) == session_arn  # what moto cannot check


def test_sts_unreachable_is_its_own_reason() -> None:
    """Nobody listening where STS should be: refused as STS unavailable, not as a bad token."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    token = signed_by("AKIAPYPROXYSTUB00001", endpoint)
    assert verified(endpoint, token).startswith("iam_sts_unavailable: ")


def test_rds_tokens_from_the_client_pointed_at_moto(moto: str) -> None:
    """[backend] iam's tokens made by the production client factory with [aws] endpoint_url at
    moto, on a Clock: one per user, kept, and made anew RDS_TOKEN_MARGIN seconds before their 15
    minutes run out.  (Signing is local to boto3: moto sees no request; the token's host is the
    database's, not the endpoint's.)"""
    from twisted.internet.task import Clock
    from twisted.trial.unittest import SynchronousTestCase

    clock = Clock()
    made: list[str] = []
    client = aws.client("rds", aws_config(moto))

    class Counting:
        def generate_db_auth_token(self, **kwargs: Any) -> str:
            made.append(kwargs["DBUsername"])
            return str(client.generate_db_auth_token(**kwargs))

    tokens = iam.RdsTokens(Counting, "db.example.internal", 3306, aws.synchronously, clock, region=REGION)

    def get(user: str) -> str:
        return str(SynchronousTestCase().successResultOf(tokens.token(user)))

    first = get("app")
    assert first.startswith("db.example.internal:3306/?Action=connect&DBUser=app&")
    assert f"%2F{REGION}%2Frds-db%2Faws4_request" in first
    assert get("app") == first and get("reports") != first and made == ["app", "reports"]
    clock.advance(iam.RDS_TOKEN_LIFETIME - iam.RDS_TOKEN_MARGIN - 1)
    assert get("app") == first and made == ["app", "reports"]
    clock.advance(1)
    get("app")
    assert made == ["app", "reports", "app"]
