"""pyproxy.credentials: the running chain as the configuration asks for it."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import auth
from pyproxy.config import TargetConfig, build
from pyproxy.credentials import Authentication
from pyproxy.lookup import LookupSource
from pyproxy.secrets import SecretsSource

SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf"
ROLE = "arn:aws:iam::123456789012:role/app-lambda"
WRITER = TargetConfig("db.internal", 3307)


def authentication(**data: object) -> Authentication:
    return Authentication(build({"users": [{"name": "app", "password": "pw"}], **data}), Clock(),
                          lambda: WRITER)


class AuthenticationTests(SynchronousTestCase):
    def test_users_alone(self) -> None:
        """[[users]] only: one source, no IAM, nothing that needs AWS or a server."""
        built = authentication()
        self.assertEqual([source.name for source in built.credentials.sources], ["config"])
        self.assertIsNone(built.credentials.iam)
        self.assertIsNone(built.secrets)
        found = self.successResultOf(built.credentials.credential("app"))
        self.assertEqual(found.passwords, ("pw",))

    def test_every_source_in_readmes_order(self) -> None:
        """[[users]], then [[secrets]], then the lookup; IAM for the users [[iam.roles]] name."""
        built = authentication(secrets=[{"arn": SECRET}],
                               auth={"lookup": True, "lookup_user": "lk", "lookup_password": "lk pw"},
                               iam={"roles": [{"arn": ROLE, "user": "app"}]})
        sources = built.credentials.sources
        self.assertEqual([source.name for source in sources], ["config", "secrets", "lookup"])
        self.assertIsInstance(sources[1], SecretsSource)
        self.assertIsInstance(sources[2], LookupSource)
        self.assertTrue(built.credentials.iam.maps("app"))
        target = built._lookup_target()
        self.assertEqual((target.host, target.port, target.user, target.password, target.database),
                         ("db.internal", 3307, "lk", "lk pw", None))
        self.assertNotIn("lk pw", repr(target))

    def test_reload_changes_the_users(self) -> None:
        built = authentication()
        built.reconfigure(build({"users": [{"name": "app", "password_hash": auth.stored_hash(b"new")}]}))
        found = self.successResultOf(built.credentials.credential("app"))
        self.assertEqual((found.passwords, found.hashes), ((), (auth.parse_stored_hash(auth.stored_hash(b"new")),)))
