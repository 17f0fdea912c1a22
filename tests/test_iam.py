"""pyproxy.iam: client tokens checked on pyproxy's side, STS answers read, ARNs mapped; RDS tokens.

Tokens are made by the real helper (boto3 signs locally; nothing is sent), and STS is a fake
here; integration/test_aws.py sends them to a signature-checking stand-in and to moto.
"""

from __future__ import annotations

import base64
import calendar
import functools
import io
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import iam, scripts
from pyproxy.aws import synchronously
from pyproxy.config import IamRoleConfig
from pyproxy.iam import (
    AUDIENCE_HEADER,
    EXPIRED,
    MALFORMED,
    NOT_GET_CALLER_IDENTITY,
    NOT_YET_VALID,
    SIGNATURE_REFUSED,
    STS_UNAVAILABLE,
    UNMAPPED,
    UNTRUSTED_ENDPOINT,
    WRONG_AUDIENCE,
    RdsTokens,
    TokenRejected,
    TokenVerifier,
    caller_arn,
    check_request,
    decode_token,
    encode_token,
    make_token,
    principal,
)

STS = "https://sts.eu-west-1.amazonaws.com"
ROLE = "arn:aws:iam::123456789012:role/service-role/app-lambda"
SESSION_ARN = "arn:aws:sts::123456789012:assumed-role/app-lambda/lambda-session-1"
ROLES = [IamRoleConfig(ROLE, "app"), IamRoleConfig("arn:aws:iam::123456789012:user/ops/alice", "ops")]

IDENTITY = b"""<GetCallerIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <GetCallerIdentityResult>
    <Arn>%s</Arn>
    <UserId>AROAEXAMPLE:lambda-session-1</UserId>
    <Account>123456789012</Account>
  </GetCallerIdentityResult>
  <ResponseMetadata><RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId></ResponseMetadata>
</GetCallerIdentityResponse>"""
REFUSED = b"""<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error><Type>Sender</Type><Code>SignatureDoesNotMatch</Code>
  <Message>The request signature we calculated does not match</Message></Error>
  <RequestId>01234567-89ab-cdef-0123-456789abcdef</RequestId>
</ErrorResponse>"""


@functools.lru_cache(maxsize=None)
def session() -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="AKIAPYPROXYUNITTEST1", region_name="eu-west-1",
                                 aws_secret_access_key="unit-test-secret", aws_session_token="tok")


@functools.lru_cache(maxsize=None)
def _token(items: tuple[tuple[str, Any], ...]) -> str:
    return make_token(session=session(), **dict(items))


def token(**kwargs: Any) -> str:
    """A token from the real helper; made once per set of arguments (building a boto3 client
    costs a few tenths of a second)."""
    return _token(tuple(sorted(kwargs.items())))


def signed_at(tok: str) -> float:
    query = dict(parse_qsl(urlsplit(decode_token(tok).url).query))
    return calendar.timegm(time.strptime(query["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))


def rejection(call: Any) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        call()
    return info.value


def check(tok: str, now: float | None = None, endpoints: tuple[str, ...] = (), audience: str = "pyproxy") -> None:
    check_request(decode_token(tok), endpoints=endpoints, audience=audience,
                  now=signed_at(tok) if now is None else now)


def replace_query(tok: str, key: str, value: str) -> str:
    request = decode_token(tok)
    parts = urlsplit(request.url)
    query = [(k, value if k == key else v) for k, v in parse_qsl(parts.query)]
    url = parts._replace(query="&".join(f"{k}={v}" for k, v in query)).geturl()
    return encode_token(url, request.headers)


def test_token_is_a_presigned_get_caller_identity_with_the_audience_signed() -> None:
    """The helper's token decodes to a GET GetCallerIdentity URL for the regional STS endpoint,
    with the audience header among the signed headers and its value in the token."""
    tok = token(audience="db-prod")
    assert tok.startswith("pyproxy-v1.") and "=" not in tok
    request = decode_token(tok)
    assert request.headers == {AUDIENCE_HEADER: "db-prod"}
    parts = urlsplit(request.url)
    query = dict(parse_qsl(parts.query))
    assert f"{parts.scheme}://{parts.netloc}" == STS
    assert query["Action"] == "GetCallerIdentity" and query["X-Amz-Expires"] == "900"
    assert query["X-Amz-SignedHeaders"] == f"host;{AUDIENCE_HEADER}"
    assert query["X-Amz-Security-Token"] == "tok"
    assert "unit-test-secret" not in tok and "unit-test-secret" not in request.url
    check(tok, audience="db-prod")


@pytest.mark.parametrize("bad", ["", "pyproxy-v1.", "pyproxy-v1.!!!", "k8s-aws-v1.aGk",
                                 "pyproxy-v1." + base64.urlsafe_b64encode(b"[1]").decode(),
                                 "pyproxy-v1." + base64.urlsafe_b64encode(b'{"url": 1}').decode(),
                                 "pyproxy-v1." + base64.urlsafe_b64encode(
                                     b'{"url": "x", "headers": {"a": 1}}').decode(),
                                 "pyproxy-v1." + "A" * 9000,
                                 "pyproxy-v1." + base64.urlsafe_b64encode(b"[" * 6000).decode()])
def test_malformed_tokens(bad: str) -> None:
    """Anything that does not decode to a URL and string headers is malformed."""
    assert rejection(lambda: decode_token(bad)).reason == MALFORMED


@pytest.mark.parametrize(("endpoint", "endpoints", "ok"), [
    ("https://sts.amazonaws.com", (), True),
    ("https://sts.us-gov-west-1.amazonaws.com", (), True),
    ("https://sts.cn-north-1.amazonaws.com.cn", (), True),
    ("http://sts.eu-west-1.amazonaws.com", (), False),
    ("https://sts.eu-west-1.amazonaws.com:8443", (), False),
    ("https://sts.eu-west-1.amazonaws.com.example.net", (), False),
    ("https://evil.example/sts.amazonaws.com", (), False),
    ("http://127.0.0.1:5000", ("http://127.0.0.1:5000",), True),
    ("http://127.0.0.1:5001", ("http://127.0.0.1:5000",), False),
    ("https://sts.amazonaws.com", ("http://127.0.0.1:5000",), False),
])
def test_only_trusted_endpoints(endpoint: str, endpoints: tuple[str, ...], ok: bool) -> None:
    """By default only AWS's STS hosts over https; with sts_endpoints, only those."""
    tok = token(endpoint_url=endpoint)
    if ok:
        check(tok, endpoints=endpoints)
    else:
        assert rejection(lambda: check(tok, endpoints=endpoints)).reason == UNTRUSTED_ENDPOINT


def test_other_actions_are_refused() -> None:
    """A presigned request for anything but GetCallerIdentity (a token for another action, or
    one edited to be) is refused before STS is asked."""
    tok = token()
    assert rejection(lambda: check(replace_query(tok, "Action", "AssumeRole"))).reason == \
        NOT_GET_CALLER_IDENTITY
    moved = encode_token(decode_token(tok).url.replace(".com/?", ".com/x?"), decode_token(tok).headers)
    assert rejection(lambda: check(moved)).reason == NOT_GET_CALLER_IDENTITY
    assert rejection(lambda: check(replace_query(tok, "X-Amz-Algorithm", "AWS4-HMAC-SHA1"))).reason == MALFORMED
    twice = encode_token(decode_token(tok).url + "&Action=GetCallerIdentity", decode_token(tok).headers)
    assert rejection(lambda: check(twice)).reason == MALFORMED


def test_audience_must_be_signed_with_the_right_value() -> None:
    """A token for another audience, one whose audience header was not signed, and one whose
    token headers differ from the signed ones are refused, each for its reason."""
    assert rejection(lambda: check(token(audience="other"))).reason == WRONG_AUDIENCE
    request = decode_token(token())
    assert rejection(lambda: check(encode_token(request.url, {}))).reason == MALFORMED
    relabelled = encode_token(request.url, {AUDIENCE_HEADER: "pyproxy", "x-extra": "1"})
    assert rejection(lambda: check(relabelled)).reason == MALFORMED
    # A presigned GetCallerIdentity made for no audience, as other services' tokens are.
    plain = session().client("sts").generate_presigned_url("get_caller_identity", Params={},
                                                            ExpiresIn=900, HttpMethod="GET")
    assert rejection(lambda: check(encode_token(plain, {}))).reason == WRONG_AUDIENCE


def test_expiry_on_pyproxys_clock() -> None:
    """Good from X-Amz-Date to X-Amz-Date + X-Amz-Expires (15 minutes at most, whatever the token
    says); refused after, and when dated more than CLOCK_SKEW in the future."""
    short = token(expires_in=60)
    start = signed_at(short)
    check(short, now=start + 60)
    assert rejection(lambda: check(short, now=start + 61)).reason == EXPIRED
    long = token(expires_in=3600)
    check(long, now=signed_at(long) + iam.MAX_TOKEN_AGE)
    assert rejection(lambda: check(long, now=signed_at(long) + iam.MAX_TOKEN_AGE + 1)).reason == EXPIRED
    check(short, now=start - iam.CLOCK_SKEW)
    assert rejection(lambda: check(short, now=start - iam.CLOCK_SKEW - 1)).reason == NOT_YET_VALID
    assert rejection(lambda: check(replace_query(short, "X-Amz-Date", "20261399T000000Z"),
                                   now=start)).reason == MALFORMED


def test_sts_answers() -> None:
    """STS's XML answer gives the ARN; a 4xx is a refused signature (its code kept for the log);
    anything else is STS being unavailable."""
    assert caller_arn(200, IDENTITY % SESSION_ARN.encode()) == SESSION_ARN
    refused = rejection(lambda: caller_arn(403, REFUSED))
    assert (refused.reason, refused.detail) == (SIGNATURE_REFUSED, "SignatureDoesNotMatch")
    assert rejection(lambda: caller_arn(400, b"")).reason == SIGNATURE_REFUSED
    assert rejection(lambda: caller_arn(503, b"<html>")).reason == STS_UNAVAILABLE
    assert rejection(lambda: caller_arn(200, b"<x/>")).reason == STS_UNAVAILABLE


@pytest.mark.parametrize(("arn", "expected"), [
    (ROLE, ("aws", "123456789012", "role", "app-lambda")),
    (SESSION_ARN, ("aws", "123456789012", "role", "app-lambda")),
    ("arn:aws:iam::123456789012:user/ops/alice", ("aws", "123456789012", "user", "alice")),
    ("arn:aws-cn:iam::123456789012:user/bob", ("aws-cn", "123456789012", "user", "bob")),
    ("arn:aws:sts::123456789012:federated-user/bob", None),
    ("arn:aws:iam::123456789012:root", None),
    ("arn:aws:sts::123456789012:assumed-role/no-session", None),
    ("arn:aws:iam::123456789012:assumed-role/app/s", None),
    ("arn:aws:sts::123456789012:user/moto", None),
])
def test_principals(arn: str, expected: tuple[str, ...] | None) -> None:
    """Roles and their assumed-role sessions are one principal; users keep their name; paths
    are left out; other kinds map to nothing."""
    assert principal(arn) == expected


@attrs.define
class FakeSts:
    arn: str = SESSION_ARN
    status: int = 200
    sent: list[tuple[str, dict[str, str]]] = attrs.field(factory=list)
    failing: Exception | None = None

    def __call__(self, url: str, headers: dict[str, str]) -> defer.Deferred[tuple[int, bytes]]:
        self.sent.append((url, headers))
        if self.failing is not None:
            return defer.fail(self.failing)
        if self.status != 200:
            return defer.succeed((self.status, REFUSED))
        return defer.succeed((200, IDENTITY % self.arn.encode()))


def verifier(sts: FakeSts, tok: str) -> tuple[TokenVerifier, Clock]:
    clock = Clock()
    clock.advance(signed_at(tok))
    return TokenVerifier(ROLES, sts, clock), clock


def outcome(d: defer.Deferred[str]) -> str:
    test = SynchronousTestCase()
    failures: list[Any] = []
    d.addErrback(failures.append)
    if failures:
        failures[0].trap(TokenRejected)
        return failures[0].value.reason
    return str(test.successResultOf(d))


def test_verified_identity_is_mapped_to_its_users() -> None:
    """The session of a configured role may log in as that role's user, and as no other; the
    request STS gets is the token's URL with its signed headers."""
    tok, sts = token(), FakeSts()
    check_it, _ = verifier(sts, tok)
    assert check_it.maps("app") and check_it.maps("ops") and not check_it.maps("root")
    assert outcome(check_it.verify(tok, "app")) == SESSION_ARN
    assert sts.sent == [(decode_token(tok).url, {AUDIENCE_HEADER: "pyproxy"})]
    assert outcome(check_it.verify(tok, "ops")) == UNMAPPED
    sts_other = FakeSts(arn="arn:aws:sts::999999999999:assumed-role/app-lambda/s")
    assert outcome(verifier(sts_other, tok)[0].verify(tok, "app")) == UNMAPPED


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    """A client reconnecting with the same token costs no second STS call, until the token's
    expiry; a token STS refused is not remembered."""
    tok, sts = token(expires_in=300), FakeSts()
    check_it, clock = verifier(sts, tok)
    assert outcome(check_it.verify(tok, "app")) == SESSION_ARN
    assert outcome(check_it.verify(tok, "app")) == SESSION_ARN
    assert len(sts.sent) == 1
    clock.advance(301)
    assert outcome(check_it.verify(tok, "app")) == EXPIRED
    refused = FakeSts(status=403)
    check_refused, _ = verifier(refused, tok)
    assert outcome(check_refused.verify(tok, "app")) == SIGNATURE_REFUSED
    assert outcome(check_refused.verify(tok, "app")) == SIGNATURE_REFUSED
    assert len(refused.sent) == 2


def test_sts_unreachable() -> None:
    """STS not answering refuses the client with its own reason."""
    tok = token()
    check_it, _ = verifier(FakeSts(failing=ConnectionRefusedError()), tok)
    assert outcome(check_it.verify(tok, "app")) == STS_UNAVAILABLE


def test_local_checks_come_before_sts() -> None:
    """An expired, wrong-audience or untrusted token never reaches STS."""
    sts = FakeSts()
    for tok, reason in ((token(audience="x"), WRONG_AUDIENCE),
                        (token(endpoint_url="https://sts.example.net"), UNTRUSTED_ENDPOINT)):
        assert outcome(verifier(sts, tok)[0].verify(tok, "app")) == reason
    tok = token()
    check_it, clock = verifier(sts, tok)
    clock.advance(iam.MAX_TOKEN_AGE + 1)
    assert outcome(check_it.verify(tok, "app")) == EXPIRED
    assert sts.sent == []


def test_reasons_are_distinct() -> None:
    """Every rejection reason is a name of its own, so the log tells them apart."""
    assert len(set(iam.REASONS)) == len(iam.REASONS) == 9


@attrs.define
class CountingRds:
    """The real boto3 RDS client, counting the tokens it makes."""

    client: Any
    made: int = 0

    def generate_db_auth_token(self, **kwargs: Any) -> str:
        self.made += 1
        return str(self.client.generate_db_auth_token(**kwargs))


def test_rds_tokens_made_and_made_again_before_they_expire() -> None:
    """[backend] iam: generate_db_auth_token's token for host, port and user, kept per user and
    made anew RDS_TOKEN_MARGIN seconds before its 15 minutes run out."""
    clock = Clock()
    rds = CountingRds(session().client("rds"))
    tokens = RdsTokens(lambda: rds, "db.example.internal", 3306, synchronously, clock, region="eu-west-1")

    def get(user: str) -> str:
        return str(SynchronousTestCase().successResultOf(tokens.token(user)))

    first = get("app")
    assert first.startswith("db.example.internal:3306/?Action=connect&DBUser=app&")
    assert "X-Amz-Expires=900" in first and "unit-test-secret" not in first
    assert get("app") == first and rds.made == 1
    assert "DBUser=reports" in get("reports") and rds.made == 2
    clock.advance(iam.RDS_TOKEN_LIFETIME - iam.RDS_TOKEN_MARGIN - 1)
    get("app")
    assert rds.made == 2
    clock.advance(1)
    assert get("app").startswith("db.example.internal:3306/?Action=connect&DBUser=app&")
    assert rds.made == 3


def test_token_command_prints_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """pyproxy-token signs with the environment's credentials and prints the token alone."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAPYPROXYUNITTEST1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit-test-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    out = io.StringIO()
    assert scripts.token(["--audience", "db-prod", "--region", "eu-west-1",
                          "--endpoint-url", "http://127.0.0.1:5000"], stdout=out) == 0
    printed = out.getvalue()
    assert printed.endswith("\n") and printed.count("\n") == 1
    request = decode_token(printed.strip())
    assert request.url.startswith("http://127.0.0.1:5000/?Action=GetCallerIdentity")
    assert request.headers == {AUDIENCE_HEADER: "db-prod"}


@settings(max_examples=100, deadline=None, database=None)
@given(hostile=st.one_of(
    st.text(max_size=300),
    st.binary(max_size=600).map(lambda raw: "pyproxy-v1." + base64.urlsafe_b64encode(raw).decode()),
    st.builds(encode_token, st.one_of(st.text(max_size=200), st.builds(
        lambda query: f"{STS}/?{query}", st.text(max_size=300))),
        st.dictionaries(st.text(max_size=20), st.text(max_size=20), max_size=3))))
def test_hostile_tokens_are_only_ever_rejected(hostile: str) -> None:
    """Whatever a client sends as a token, verify() fails with TokenRejected (or, for a token
    that passes every local check, asks STS): no other exception, and the token never in the
    reason's detail."""
    sts = FakeSts(status=403)
    check_it = TokenVerifier(ROLES, sts, Clock())
    reason = outcome(check_it.verify(hostile, "app"))
    assert reason in iam.REASONS
    failures: list[Any] = []
    check_it.verify(hostile, "app").addErrback(failures.append)
    if len(hostile) > 12:
        assert hostile not in str(failures[0].value)
