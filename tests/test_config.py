"""pyproxy.config: TOML, environment and overrides, each bad value named by key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from pyproxy.config import (
    SECTIONS,
    NO_USERS,
    TABLE_ARRAYS,
    Config,
    ConfigError,
    IamRoleConfig,
    SecretConfig,
    TargetConfig,
    UserConfig,
    build,
    check,
    env_overrides,
    load,
)

USERS = [{"name": "app", "password": "secret"}]


def test_defaults() -> None:
    """An empty document gives the documented defaults."""
    config = build({})
    assert config == Config()
    assert config.proxy.listen == "tcp:3306"
    assert config.proxy.max_packet_size == 1 << 30
    assert config.backend.charset == 45
    assert config.pool.max_connections == 100
    assert config.pool.borrow_timeout == 120
    assert config.health.interval == 10
    assert config.users == ()


def test_full_document() -> None:
    """Every section of the README example is read."""
    config = build({
        "proxy": {"listen": "tcp:6033", "max_packet_size": 1024, "handshake_timeout": 3},
        "backend": {"host": "db", "port": 3307, "database": "app", "connect_timeout": 2.5, "charset": 33},
        "pool": {"max_connections": 5, "min_idle": 1, "borrow_timeout": 1, "max_lifetime": 60,
                 "idle_timeout": 30},
        "health": {"interval": 0.5},
        "log": {"level": "debug", "format": "json"},
        "users": USERS + [{"name": "nopw"}],
    })
    assert config.backend.host == "db"
    assert config.pool.min_idle == 1
    assert config.user("app").password == "secret"  # type: ignore[union-attr]
    assert config.user("nopw").password == ""  # type: ignore[union-attr]
    assert config.user("ghost") is None


def test_password_not_in_repr() -> None:
    """A user's password never shows in its repr (so never in a log line)."""
    assert "'secret'" not in repr(build({"users": USERS}))


@pytest.mark.parametrize(("data", "message"), [
    ({"proxi": {}}, "unknown section [proxi]"),
    ({"proxy": {"listn": "x"}}, "unknown key proxy.listn"),
    ({"proxy": "tcp:1"}, "[proxy] must be a table"),
    ({"backend": {"port": 0}}, "backend.port: must be a TCP port number"),
    ({"backend": {"port": "3306"}}, "backend.port"),
    ({"backend": {"port": True}}, "backend.port"),
    ({"pool": {"max_connections": 0}}, "pool.max_connections: must be a positive number"),
    ({"pool": {"min_idle": -1}}, "pool.min_idle: must be zero or a positive integer"),
    ({"pool": {"borrow_timeout": "2"}}, "pool.borrow_timeout"),
    ({"log": {"level": "verbose"}}, "log.level: must be one of debug, info, warning, error, got 'verbose'"),
    ({"users": {"name": "app"}}, "users must be an array of tables"),
    ({"users": [{"password": "x"}]}, "users[0].name is required"),
    ({"users": [{"name": "a", "pasword": "x"}]}, "unknown key users[0].pasword"),
    ({"users": [{"name": "a", "password": 1}]}, "users[0].password"),
    ({"users": [{"name": 7}]}, "users[0].name"),
    ({"users": USERS + [{"name": "app"}]}, "users[1].name: duplicate user 'app'"),
    ({"backend": {"targets": []}}, "backend.targets must be a non-empty array of tables"),
    ({"backend": {"targets": [{"port": 1}]}}, "backend.targets[0].host is required"),
    ({"backend": {"targets": [{"host": "a", "role": "primary"}]}},
     "backend.targets[0].role: must be one of writer, reader, auto, got 'primary'"),
    ({"backend": {"targets": [{"host": "a", "port": 0}]}}, "backend.targets[0].port: must be a TCP port"),
    ({"backend": {"targets": [{"host": "a", "weight": 2}]}}, "unknown key backend.targets[0].weight"),
    ({"backend": {"targets": [{"host": "a"}, {"host": "a", "port": 3306}]}},
     "backend.targets[1]: a:3306 is listed twice"),
    ({"backend": {"targets": [{"host": "a", "role": "reader"}]}}, "no target with role writer or auto"),
    ({"backend": {"host": "a", "targets": [{"host": "b"}]}}, "exclude each other"),
    ({"health": {"failure_threshold": 0}}, "health.failure_threshold: must be a positive number"),
    ({"proxy": {"read_only_listen": 3307}}, "proxy.read_only_listen: must be a string"),
    ({"proxy": {"listen": "bogus:1"}}, "proxy.listen: must be a Twisted endpoint"),
    ({"proxy": {"listen": "tcp:notaport"}}, "proxy.listen: must be a Twisted endpoint"),
    ({"proxy": {"listen": ""}}, "proxy.listen: must be a Twisted endpoint"),
    ({"proxy": {"read_only_listen": "tcp:"}}, "proxy.read_only_listen: must be a Twisted endpoint"),
])
def test_bad_values_name_their_key(data: dict, message: str) -> None:
    """Each bad value is reported as one ConfigError naming the key at fault."""
    with pytest.raises(ConfigError) as info:
        build(data)
    assert message in str(info.value)


def test_targets() -> None:
    """[[backend.targets]] lists the servers; without it host and port name the one writer."""
    config = build({"backend": {"targets": [{"host": "w", "port": 3307},
                                            {"host": "r", "role": "reader"},
                                            {"host": "x", "port": 3309, "role": "auto"}]}})
    assert [(t.name, t.role) for t in config.backend.servers()] == [
        ("w:3307", "writer"), ("r:3306", "reader"), ("x:3309", "auto")]
    single = build({"backend": {"host": "db", "port": 3310}}).backend.servers()
    assert [(t.name, t.role) for t in single] == [("db:3310", "writer")]


def test_targets_from_the_environment() -> None:
    """PYPROXY_BACKEND_TARGETS="host:port:role,..." for containers configured by environment."""
    config = load(None, {"PYPROXY_BACKEND_TARGETS": "w:3307:writer, r:3308:reader,x",
                         "PYPROXY_USERS": "app:pw"})
    assert [(t.name, t.role) for t in config.backend.servers()] == [
        ("w:3307", "writer"), ("r:3308", "reader"), ("x:3306", "writer")]


def test_empty_database_means_none() -> None:
    """database = "" (as an environment variable gives it) means no default schema."""
    assert build({"backend": {"database": ""}}).backend.database is None


def test_env_overrides_are_typed() -> None:
    """PYPROXY_<SECTION>_<KEY> values take the type of the key's default."""
    out = env_overrides({
        "PYPROXY_BACKEND_HOST": "db", "PYPROXY_BACKEND_PORT": "3307",
        "PYPROXY_POOL_BORROW_TIMEOUT": "2.5", "PYPROXY_POOL_MAX_CONNECTIONS": "7",
        "PYPROXY_HEALTH_INTERVAL": "3", "UNRELATED": "x",
    })
    assert out == {"backend": {"host": "db", "port": 3307},
                   "pool": {"borrow_timeout": 2.5, "max_connections": 7},
                   "health": {"interval": 3.0}}


def test_env_bad_number_is_reported_by_key() -> None:
    """A non-number in a numeric variable fails validation under its key."""
    with pytest.raises(ConfigError, match="pool.max_connections"):
        load(None, {"PYPROXY_POOL_MAX_CONNECTIONS": "many", "PYPROXY_USERS": "app:pw"})


def test_env_users() -> None:
    """PYPROXY_USERS="name:password,..." replaces the user list; a password may hold ':'."""
    out = env_overrides({"PYPROXY_USERS": "app:secret, other:p:w ,nopw,"})
    assert out["users"] == [{"name": "app", "password": "secret"}, {"name": "other", "password": "p:w"},
                            {"name": "nopw", "password": ""}]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pyproxy.toml"
    path.write_text(text)
    return str(path)


def test_load_precedence(tmp_path: Path) -> None:
    """File, then environment, then explicit overrides, each winning over the one before."""
    path = write(tmp_path, '[backend]\nhost = "file"\nport = 1\ndatabase = "f"\n'
                           '[[users]]\nname = "app"\npassword = "secret"\n')
    config = load(path, {"PYPROXY_BACKEND_HOST": "env", "PYPROXY_BACKEND_PORT": "2"},
                  {"backend": {"host": "cli"}})
    assert (config.backend.host, config.backend.port, config.backend.database) == ("cli", 2, "f")
    assert config.user("app") is not None


def test_env_users_replace_file_users(tmp_path: Path) -> None:
    """PYPROXY_USERS replaces, not extends, the file's [[users]]."""
    path = write(tmp_path, '[[users]]\nname = "app"\npassword = "secret"\n')
    config = load(path, {"PYPROXY_USERS": "other:pw"})
    assert [u.name for u in config.users] == ["other"]


def test_load_requires_users(tmp_path: Path) -> None:
    """A configuration without users is refused: nobody could log in."""
    with pytest.raises(ConfigError, match="no \\[\\[users\\]\\]"):
        load(write(tmp_path, "[proxy]\n"), {})


def test_load_missing_file(tmp_path: Path) -> None:
    """A file that cannot be read is one line naming it."""
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(str(tmp_path / "nope.toml"), {})


def test_load_invalid_toml(tmp_path: Path) -> None:
    """Broken TOML is reported with the file name."""
    path = write(tmp_path, "[proxy\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load(path, {})


def test_load_without_file_uses_environment() -> None:
    """No file at all: the environment alone can configure pyproxy."""
    config = load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_PROXY_LISTEN": "tcp:6033"})
    assert config.proxy.listen == "tcp:6033"
def test_min_idle_must_be_a_whole_number() -> None:
    """min_idle counts connections, so a fractional value is refused by key."""
    with pytest.raises(ConfigError, match="pool.min_idle"):
        build({"pool": {"min_idle": 1.5}})


def test_session_ignore_variables() -> None:
    """[session] ignore_variables takes a list of names (lower-cased); anything else is
    refused with one line naming the key."""
    config = build({"session": {"ignore_variables": ["Insert_ID", "rand_seed1"]},
                    "users": [{"name": "app"}]})
    assert config.session.ignore_variables == ("insert_id", "rand_seed1")
    with pytest.raises(ConfigError, match=r"session\.ignore_variables: must be a list of names"):
        build({"session": {"ignore_variables": "insert_id"}})


EXAMPLE = Path(__file__).resolve().parent.parent / "pyproxy.example.toml"


def test_example_file_lists_every_key_with_its_default() -> None:
    """pyproxy.example.toml has each key of each section, written with the loader's default
    (and its type), so a new key without an entry there, or a changed default, fails here."""
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    config = load(str(EXAMPLE), {})
    assert set(data) == {*SECTIONS, "users"}
    for section, cls in SECTIONS.items():
        fields = attrs.fields_dict(cls)
        written = data[section]
        expected = set(fields) - {key for owner, key in TABLE_ARRAYS if owner is cls}
        assert set(written) == expected, section
        assert getattr(config, section) == cls(), section
        for key in expected:
            default = fields[key].default
            # "" stands for None (no default schema), [] for an empty tuple.
            kind = {type(None): str, tuple: list}.get(type(default), type(default))
            assert type(written[key]) is kind, f"{section}.{key}"
    assert [(user.name, user.password) for user in config.users] == [("app", "change-me")]
    assert set(data["users"][0]) == set(attrs.fields_dict(UserConfig)) - {"password_hash"}
    assert "\n# password_hash = " in text


def commented_block(header: str) -> dict[str, Any]:
    """The commented-out table array that starts with ``# header`` in the example, parsed."""
    lines = EXAMPLE.read_text().splitlines()
    start = lines.index(f"# {header}")
    block = []
    for line in lines[start:]:
        if not line.startswith("# "):
            break
        block.append(line[2:])
    return tomllib.loads("\n".join(block))


def test_example_file_shows_a_backend_target_with_every_key() -> None:
    """The commented-out [[backend.targets]] entry parses, once uncommented, with every key
    of a target and the defaults of all but host."""
    (target,) = commented_block("[[backend.targets]]")["backend"]["targets"]
    assert set(target) == set(attrs.fields_dict(TargetConfig))
    assert TargetConfig(**target) == TargetConfig(target["host"])


def test_example_file_shows_an_iam_role_and_a_secret() -> None:
    """The commented-out [[iam.roles]] and [[secrets]] entries are valid, with every key."""
    data = {**commented_block("[[iam.roles]]"), **commented_block("[[secrets]]")}
    assert set(data["iam"]["roles"][0]) == set(attrs.fields_dict(IamRoleConfig))
    assert set(data["secrets"][0]) == set(attrs.fields_dict(SecretConfig))
    config = build(data)
    assert config.iam.roles[0].user == "app" and len(config.secrets) == 1


def test_env_list_keys_are_comma_separated() -> None:
    """A list key's environment form: names separated by commas, blanks ignored."""
    config = load(None, {"PYPROXY_USERS": "app:pw",
                         "PYPROXY_SESSION_IGNORE_VARIABLES": "SQL_Notes, foreign_key_checks,"})
    assert config.session.ignore_variables == ("sql_notes", "foreign_key_checks")
    assert load(None, {"PYPROXY_USERS": "app:pw",
                       "PYPROXY_SESSION_IGNORE_VARIABLES": ""}).session.ignore_variables == ()


@pytest.mark.parametrize("name", ["PYPROXY_POOL_MAX_CONECTIONS", "PYPROXY_PROXY_LISTN",
                                  "PYPROXY_LOG_", "PYPROXY_USER", "PYPROXY_USERS_EXTRA"])
def test_env_unknown_configuration_variable(name: str) -> None:
    """A name in the configuration's namespace that is no key is refused, naming it."""
    with pytest.raises(ConfigError, match=f"unknown environment variable {name}:"):
        load(None, {"PYPROXY_USERS": "app:pw", name: "1"})


def test_env_names_outside_the_configuration_are_left_alone() -> None:
    """The test suite chooses its servers with PYPROXY_TEST_*; pyproxy does not judge them."""
    config = load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_TEST_MYSQL": "h:1:u:p",
                         "PYPROXY_TEST_DOCKER": "1", "PYPROXY_SQLA_SDIST": "x"})
    assert config == load(None, {"PYPROXY_USERS": "app:pw"})


@pytest.mark.parametrize("value", [918273645, 6.02214076, True, ["hunter2"], {"inner": "hunter2"}])
@pytest.mark.parametrize("data", [
    lambda v: {"users": [{"name": "app", "password": v}]},
    lambda v: {"health": {"password": v}, "users": USERS},
])
def test_secret_values_are_never_shown(data: Any, value: object) -> None:
    """A password of any wrong type is refused by key, with its kind but not its value."""
    with pytest.raises(ConfigError) as info:
        build(data(value))
    message = str(info.value)
    assert "password" in message and "not shown" in message
    for needle in ("918273645", "6.02214076", "True", "true", "hunter2"):
        assert needle not in message


def test_metrics_listen() -> None:
    """[metrics] listen is off by default, takes an endpoint (also from the environment),
    and a bad one is refused by key."""
    assert build({}).metrics.listen == ""
    assert build({"metrics": {"listen": "tcp:9180:interface=127.0.0.1"}}).metrics.listen.startswith("tcp:9180")
    config = load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_METRICS_LISTEN": "tcp:9181"})
    assert config.metrics.listen == "tcp:9181"
    with pytest.raises(ConfigError, match=r"metrics\.listen: must be a Twisted endpoint"):
        build({"metrics": {"listen": "http://0.0.0.0:9180"}})
    with pytest.raises(ConfigError, match="unknown environment variable PYPROXY_METRICS_PORT"):
        load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_METRICS_PORT": "9180"})


def test_check_lists_every_problem(tmp_path: Path) -> None:
    """check() reports each bad key once, in file order, instead of stopping at the first;
    build() keeps stopping at the first with the same message."""
    path = tmp_path / "bad.toml"
    path.write_text('[proxy]\nlisten = "nowhere:at:all"\nbacklog = -1\n\n[pool]\nmax_conections = 5\n\n'
                    '[metrics]\nlisten = 9180\n\n[nonsense]\nx = 1\n\n'
                    '[[users]]\nname = "app"\npassword = 5\n\n[[users]]\nname = "b"\n')
    config, problems = check(str(path), {"PYPROXY_POOL_MIN_IDLE": "many"})
    assert config is None
    assert [problem.split(":")[0] for problem in problems] == [
        "proxy.listen", "proxy.backlog", "unknown key pool.max_conections", "pool.min_idle",
        "metrics.listen", "unknown section [nonsense]", "users[0].password"]
    with pytest.raises(ConfigError) as info:
        load(str(path), {"PYPROXY_POOL_MIN_IDLE": "many"})
    assert str(info.value) == problems[0]


def test_check_of_a_good_file_and_of_unreadable_ones(tmp_path: Path) -> None:
    """A good file gives its Config and no problem; an unreadable or non-TOML file, or
    one without users, gives one line."""
    good = tmp_path / "good.toml"
    good.write_text('[[users]]\nname = "app"\npassword = "pw"\n')
    config, problems = check(str(good), {})
    assert problems == [] and config is not None and config.users[0].name == "app"
    assert check(str(tmp_path / "missing.toml"), {})[1] == [
        f"cannot read config file {tmp_path / 'missing.toml'}: No such file or directory"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[proxy\n")
    (problem,) = check(str(broken), {})[1]
    assert "is not valid TOML" in problem
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert check(str(empty), {})[1] == [NO_USERS]
    unknown_env = check(str(good), {"PYPROXY_POOL_SIZE": "3"})[1]
    assert len(unknown_env) == 1 and "PYPROXY_POOL_SIZE" in unknown_env[0]


ROLE = "arn:aws:iam::123456789012:role/app-lambda"
SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf"
HASH = "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4"


def test_security_keys() -> None:
    """[aws], [auth], [iam] with [[iam.roles]], [[secrets]], [backend] iam and
    [[users]] password_hash are read as written."""
    config = build({
        "backend": {"iam": True},
        "aws": {"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:5000", "secrets_refresh": 60},
        "auth": {"lookup": True, "lookup_user": "pyproxy_lookup", "lookup_password": "lp", "lookup_cache": 5},
        "iam": {"audience": "db-prod", "sts_endpoints": ["https://sts.eu-west-1.amazonaws.com/"],
                "roles": [{"arn": ROLE, "user": "app"},
                          {"arn": "arn:aws:iam::123456789012:user/ops", "user": "ops"}]},
        "secrets": [{"arn": SECRET}],
        "users": [{"name": "hashed", "password_hash": HASH}],
    })
    assert config.backend.iam and config.aws.region == "eu-west-1"
    assert config.auth.lookup_user == "pyproxy_lookup" and config.auth.lookup_cache == 5
    assert config.iam.sts_endpoints == ("https://sts.eu-west-1.amazonaws.com",)
    assert [(role.arn, role.user) for role in config.iam.roles] == [
        (ROLE, "app"), ("arn:aws:iam::123456789012:user/ops", "ops")]
    assert config.secrets == (SecretConfig(SECRET),)
    assert config.user("hashed").password_hash == HASH  # type: ignore[union-attr]
    assert "lp" not in repr(config) and HASH not in repr(config)


@pytest.mark.parametrize(("data", "message"), [
    ({"aws": {"endpoint_url": "127.0.0.1:5000"}}, "aws.endpoint_url: must be an endpoint URL"),
    ({"aws": {"endpoint_url": "http://h/path"}}, "aws.endpoint_url: must be an endpoint URL"),
    ({"aws": {"secrets_refresh": 0}}, "aws.secrets_refresh: must be a positive number"),
    ({"aws": {"region": 1}}, "aws.region: must be a string"),
    ({"auth": {"lookup": "yes"}}, "auth.lookup: must be true or false"),
    ({"auth": {"lookup": True}}, "auth.lookup_user: lookup = true needs the account"),
    ({"auth": {"lookup_cache": -1}}, "auth.lookup_cache: must be a positive number"),
    ({"iam": {"audience": ""}}, "iam.audience: must be a non-empty string"),
    ({"iam": {"sts_endpoints": "https://sts.amazonaws.com"}}, "iam.sts_endpoints: must be a list"),
    ({"iam": {"sts_endpoints": ["sts.amazonaws.com"]}}, "iam.sts_endpoints: must be a list"),
    ({"iam": {"roles": {"arn": ROLE}}}, "iam.roles must be an array of tables"),
    ({"iam": {"roles": [{"user": "app"}]}}, "iam.roles[0].arn is required"),
    ({"iam": {"roles": [{"arn": ROLE}]}}, "iam.roles[0].user is required"),
    ({"iam": {"roles": [{"arn": "arn:aws:iam::1:role/x", "user": "a"}]}},
     "iam.roles[0].arn: must be an IAM role or user ARN"),
    ({"iam": {"roles": [{"arn": ROLE, "user": ""}]}}, "iam.roles[0].user: must be a non-empty string"),
    ({"iam": {"roles": [{"arn": ROLE, "user": "a", "db": "x"}]}}, "unknown key iam.roles[0].db"),
    ({"iam": {"roles": ["x"]}}, "iam.roles[0] must be a table"),
    ({"secrets": {"arn": SECRET}}, "secrets must be an array of tables"),
    ({"secrets": [{}]}, "secrets[0].arn is required"),
    ({"secrets": [{"arn": "app-secret"}]}, "secrets[0].arn: must be a Secrets Manager secret ARN"),
    ({"secrets": [{"arn": SECRET}, {"arn": SECRET}]}, "secrets[1].arn: " + SECRET + " is listed twice"),
    ({"backend": {"iam": 1}}, "backend.iam: must be true or false"),
    ({"users": [{"name": "a", "password_hash": "*12"}]}, "users[0].password_hash: must be '*' and 40"),
    ({"users": [{"name": "a", "password": "x", "password_hash": HASH}]},
     "users[0]: password and password_hash exclude each other"),
])
def test_bad_security_values_name_their_key(data: dict, message: str) -> None:
    """Each bad value of the security keys is one ConfigError naming the key."""
    with pytest.raises(ConfigError) as info:
        build(data)
    assert message in str(info.value)


@pytest.mark.parametrize("data", [
    {"users": [{"name": "a", "password_hash": "*0123456789abcdef0123456789ABCDEF0123456"}]},
    {"auth": {"lookup_password": 918273645}},
])
def test_security_secrets_are_never_shown(data: dict) -> None:
    """A bad password_hash or lookup_password is refused without its value."""
    with pytest.raises(ConfigError) as info:
        build(data)
    assert "not shown" in str(info.value)
    assert "0123456789" not in str(info.value) and "918273645" not in str(info.value)


def test_security_keys_from_the_environment() -> None:
    """PYPROXY_IAM_ROLES="arn=user,...", PYPROXY_SECRETS="arn,..." and the scalar keys by name."""
    config = load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_AWS_REGION": "eu-west-1",
                         "PYPROXY_AUTH_LOOKUP": "true", "PYPROXY_AUTH_LOOKUP_USER": "lk",
                         "PYPROXY_IAM_ROLES": f"{ROLE}=app, arn:aws:iam::123456789012:user/o=ops",
                         "PYPROXY_IAM_STS_ENDPOINTS": "http://127.0.0.1:5000",
                         "PYPROXY_SECRETS": f"{SECRET},", "PYPROXY_BACKEND_IAM": "1"})
    assert config.aws.region == "eu-west-1" and config.auth.lookup and config.backend.iam
    assert [(role.arn, role.user) for role in config.iam.roles] == [
        (ROLE, "app"), ("arn:aws:iam::123456789012:user/o", "ops")]
    assert config.iam.sts_endpoints == ("http://127.0.0.1:5000",)
    assert config.secrets == (SecretConfig(SECRET),)
    with pytest.raises(ConfigError, match="unknown environment variable PYPROXY_SECRET_ARN"):
        load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_SECRET_ARN": SECRET})


def test_admin_console_keys() -> None:
    """[admin]: off without a user; a user needs a password or a hash, not both; the
    environment sets it like any section; its secrets are known to the logs."""
    from pyproxy.config import env_overrides, secrets

    users = [{"name": "app", "password": "pw"}]
    assert not build({"users": users}).admin.enabled
    assert build({"users": users}).admin.listen == "tcp:6034:interface=127.0.0.1"
    config = build({"users": users, "admin": {"user": "boss", "password": "console-pw"}})
    assert config.admin.enabled and "console-pw" in secrets(config)
    assert "console-pw" not in repr(config)
    assert not build({"users": users, "admin": {"user": "boss", "password": "x", "listen": ""}}).admin.enabled
    with pytest.raises(ConfigError, match="admin.password: the admin console's user needs"):
        build({"users": users, "admin": {"user": "boss"}})
    with pytest.raises(ConfigError, match="exclude each other"):
        build({"users": users, "admin": {"user": "boss", "password": "x", "password_hash": "*" + "A" * 40}})
    with pytest.raises(ConfigError, match="admin.password_hash"):
        build({"users": users, "admin": {"user": "boss", "password_hash": "not-a-hash"}})
    with pytest.raises(ConfigError, match="admin.listen"):
        build({"users": users, "admin": {"listen": "nonsense:endpoint"}})
    env = env_overrides({"PYPROXY_ADMIN_USER": "boss", "PYPROXY_ADMIN_PASSWORD": "pw2",
                         "PYPROXY_LOG_DEBUG_STATEMENTS_FOR": "30"})
    assert env == {"admin": {"user": "boss", "password": "pw2"}, "log": {"debug_statements_for": 30.0}}
    with pytest.raises(ConfigError, match="log.debug_statements_for"):
        build({"users": users, "log": {"debug_statements_for": -1}})


def test_users_may_come_from_secrets_or_the_lookup_alone() -> None:
    """[[users]] is not needed when [[secrets]] or [auth] lookup bring users; the probes then
    need an account with a password: [health] user, a [[users]] password, or the lookup's."""
    lookup = load(None, {"PYPROXY_AUTH_LOOKUP": "1", "PYPROXY_AUTH_LOOKUP_USER": "lk"})
    assert lookup.users == () and lookup.auth.lookup
    with pytest.raises(ConfigError, match="health.user: no \\[\\[users\\]\\] entry has a password"):
        load(None, {"PYPROXY_SECRETS": SECRET})
    secrets = load(None, {"PYPROXY_SECRETS": SECRET, "PYPROXY_HEALTH_USER": "monitor"})
    assert secrets.secrets[0].arn == SECRET
    with pytest.raises(ConfigError, match="health.user"):
        load(None, {"PYPROXY_USERS": "app:"}, {"users": [{"name": "app", "password_hash": "*" + "A" * 40}]})
    with pytest.raises(ConfigError, match="no \\[\\[users\\]\\], \\[\\[secrets\\]\\] or \\[auth\\] lookup"):
        load(None, {})


def test_failure_delay_keys() -> None:
    config = load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_AUTH_FAILURE_DELAY": "0.5",
                         "PYPROXY_AUTH_MAX_FAILURES": "3", "PYPROXY_AUTH_FAILURE_WINDOW": "30",
                         "PYPROXY_AUTH_FAILURE_DELAY_MAX": "2"})
    assert (config.auth.failure_delay, config.auth.max_failures, config.auth.failure_window,
            config.auth.failure_delay_max) == (0.5, 3, 30.0, 2.0)
    with pytest.raises(ConfigError, match="auth.max_failures"):
        load(None, {"PYPROXY_USERS": "app:pw", "PYPROXY_AUTH_MAX_FAILURES": "0"})
