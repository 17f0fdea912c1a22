"""Configuration: TOML file, then PYPROXY_* environment variables, then command-line options.

Everything is validated when loaded, so a bad value is reported once, by
key, before pyproxy listens on anything.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet import endpoints

from pyproxy.auth import STORED_HASH
from pyproxy.logs import names_a_secret


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong kind; the
    message names the key, and never shows a secret's value."""


def _kind(value: object) -> str:
    """What a value is, in TOML's words, for messages that must not show it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, (list, tuple)):
        return "an array"
    return f"a {type(value).__name__}"


def _bad(attribute: attrs.Attribute, requirement: str, value: object) -> ConfigError:
    """A validator's complaint.  The value of a key that names a secret is
    described by its kind only, so that no error message, and so no
    ``reload_failed`` log line, ever carries a password, whatever its type."""
    if names_a_secret(attribute.name):
        return ConfigError(f"{requirement}, got {_kind(value)} (a secret: its value is not shown)")
    return ConfigError(f"{requirement}, got {value!r}")


def _positive(kind: type) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:  # type: ignore[operator]
            raise _bad(attribute, "must be a positive number", value)
    return check


def _non_negative_int(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _bad(attribute, "must be zero or a positive integer", value)


def _non_negative_number(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise _bad(attribute, "must be zero or a positive number", value)


def _string(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str):
        raise _bad(attribute, "must be a string", value)


def _bool(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, bool):
        raise _bad(attribute, "must be true or false", value)


def _name(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise _bad(attribute, "must be a non-empty string", value)


_URL = re.compile(r"https?://[^/?#\s]+/?")


def _url(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """An AWS endpoint: scheme and host (and port), nothing after; "" for AWS's own."""
    if not isinstance(value, str) or not (value == "" or _URL.fullmatch(value)):
        raise _bad(attribute, "must be an endpoint URL such as https://sts.eu-west-1.amazonaws.com"
                              " or http://127.0.0.1:5000, or \"\"", value)


def _urls(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) and _URL.fullmatch(item) for item in value):
        raise ConfigError(f"must be a list of endpoint URLs such as https://sts.amazonaws.com, "
                          f"got {value!r}")
    return tuple(item.rstrip("/") for item in value)


def _stored_hash(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not (value == "" or STORED_HASH.fullmatch(value)):
        raise _bad(attribute, "must be '*' and 40 hex digits (pyproxy-hash-password prints it)", value)


# A role or user whose verified identity may log in (iam.roles): assumed-role
# sessions of a role count as the role.
IAM_ARN = re.compile(r"arn:[a-z0-9-]+:iam::\d{12}:(role|user)/[\w+=,.@/-]+")
SECRET_ARN = re.compile(r"arn:[a-z0-9-]+:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+")


def _iam_arn(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not IAM_ARN.fullmatch(value):
        raise _bad(attribute, "must be an IAM role or user ARN such as "
                              "arn:aws:iam::123456789012:role/app", value)


def _secret_arn(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not SECRET_ARN.fullmatch(value):
        raise _bad(attribute, "must be a Secrets Manager secret ARN such as "
                              "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf", value)


def _port(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _bad(attribute, "must be a TCP port number", value)


def _endpoint(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """A Twisted server endpoint string, parsed (not bound) now so that a bad
    one is reported by key rather than as a traceback when pyproxy listens."""
    _string(instance, attribute, value)
    try:
        # Parsing only stores the reactor, so none is needed (or installed) yet.
        endpoints.serverFromString(None, value)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - parsers raise ValueError, ImportError, KeyError...
        raise ConfigError(f"must be a Twisted endpoint such as tcp:3306 or "
                          f"tcp:6033:interface=127.0.0.1, got {value!r} ({exc})") from None


def _optional_endpoint(instance: object, attribute: attrs.Attribute, value: object) -> None:
    """An endpoint string, or "" for a listener that is off."""
    if value != "":
        _endpoint(instance, attribute, value)


def _workers(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if value == "auto":
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise _bad(attribute, 'must be a number of processes from 1 to 256, or "auto"', value)


@attrs.frozen
class ProxyConfig:
    listen: str = attrs.field(default="tcp:3306", validator=_endpoint)
    # Largest packet accepted from a client (bytes); larger ones get error 1153.
    max_packet_size: int = attrs.field(default=1 << 30, validator=_positive(int))
    # Seconds a client may take to log in.
    handshake_timeout: float = attrs.field(default=10.0, validator=_positive((int, float)))
    # Pending connections the kernel queues before pyproxy accepts them; a
    # connection storm overflows a small queue into SYN retransmits (1 s, 3 s).
    backlog: int = attrs.field(default=1024, validator=_positive(int))
    # The plugin announced in the greeting; clients may answer with either.
    auth_plugin: str = attrs.field(default="mysql_native_password", validator=attrs.validators.in_(
        ("mysql_native_password", "caching_sha2_password")))
    # Clients connected at once; the next one gets error 1040 instead of a greeting.
    max_client_connections: int = attrs.field(default=10000, validator=_positive(int))
    # Seconds a client may stay idle between commands before it is disconnected
    # (like RDS Proxy's IdleClientTimeout); an open transaction is rolled back.
    idle_client_timeout: float = attrs.field(default=1800.0, validator=_positive((int, float)))
    # Seconds a statement may run before pyproxy stops it with KILL QUERY on
    # the server (the client gets the server's error); 0 turns it off.
    query_timeout: float = attrs.field(default=0.0, validator=_non_negative_number)
    # Seconds a shutdown (SIGTERM) waits for open transactions to finish.
    drain_timeout: float = attrs.field(default=30.0, validator=_non_negative_number)
    # A second listener whose sessions go to reader targets (round-robin);
    # "" leaves it off.
    read_only_listen: str = attrs.field(default="", validator=_optional_endpoint)
    # Behind a load balancer: every connection on both listeners must start with a PROXY
    # protocol header (v1 or v2) naming the client's address; one without it is closed.
    proxy_protocol: bool = attrs.field(default=False, validator=_bool)
    # Processes that accept on the same ports (SO_REUSEPORT), each with its own reactor and
    # pools, under one parent; "auto" = one per core. The backend budget is shared.
    workers: int | str = attrs.field(default=1, validator=_workers)

    def worker_count(self) -> int:
        """``workers`` as a number of processes."""
        if self.workers == "auto":
            return max(1, os.cpu_count() or 1)
        return int(self.workers)

    def __attrs_post_init__(self) -> None:
        if self.workers != 1:
            from pyproxy.reuseport import ReusePortError, parse_tcp  # noqa: PLC0415

            for key in ("listen", "read_only_listen"):
                description = getattr(self, key)
                if not description:
                    continue
                try:
                    parse_tcp(description)
                except ReusePortError as exc:
                    raise ConfigError(f"{key}: with workers, {exc}") from None


ROLES = ("writer", "reader", "auto")


@attrs.frozen
class TargetConfig:
    """One server of the backend.  ``writer`` takes writes whenever it is
    writable; ``reader`` only ever serves the read-only listener; ``auto``
    is whichever its read_only setting says (what Aurora instances need)."""

    host: str = attrs.field(validator=_string)
    port: int = attrs.field(default=3306, validator=_port)
    role: str = attrs.field(default="writer", validator=attrs.validators.in_(ROLES))

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen
class BackendConfig:
    host: str = attrs.field(default="127.0.0.1", validator=_string)
    port: int = attrs.field(default=3306, validator=_port)
    database: str | None = attrs.field(default=None)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive((int, float)))
    # Collation id pyproxy logs in with (45 = utf8mb4_general_ci).
    charset: int = attrs.field(default=45, validator=_positive(int))
    # A statement without a result set run on every new backend connection
    # (like RDS Proxy's InitQuery), e.g. "SET SESSION wait_timeout = 600".
    init_query: str = attrs.field(default="", validator=_string)
    # [[backend.targets]]: the servers, when there is more than host/port.
    targets: tuple[TargetConfig, ...] = attrs.field(default=(), converter=tuple)
    # Log in to the backend with RDS IAM tokens (generate_db_auth_token) instead
    # of passwords; the tokens go as mysql_clear_password, so only over TLS.
    iam: bool = attrs.field(default=False, validator=_bool)
    # TLS to the servers: "off", or "verify" (the certificate must chain to
    # ``ca`` and name the server; a server without TLS is refused, never
    # used in plaintext).
    tls: str = attrs.field(default="off", validator=attrs.validators.in_(("off", "verify")))
    # PEM file of the CAs the servers' certificates must chain to (for RDS,
    # its global bundle); "" = the system's CAs.
    ca: str = attrs.field(default="", validator=_string)
    # The name the certificates must carry; "" = each target's own host.
    server_name: str = attrs.field(default="", validator=_string)

    def servers(self) -> tuple[TargetConfig, ...]:
        """The targets, or the single writer that host and port name."""
        return self.targets or (TargetConfig(self.host, self.port, "writer"),)


@attrs.frozen
class TlsConfig:
    """TLS towards clients: pyproxy answers an SSLRequest with this certificate
    (PEM; the leaf first, then intermediates) and key, both read again on
    SIGHUP.  Without ``cert`` pyproxy offers no TLS."""

    cert: str = attrs.field(default="", validator=_string)
    key: str = attrs.field(default="", validator=_string)
    # Refuse logins without TLS (error 3159), like RDS Proxy's RequireTLS.
    require: bool = attrs.field(default=False, validator=_bool)


@attrs.frozen
class PoolConfig:
    max_connections: int = attrs.field(default=100, validator=_positive(int))
    min_idle: int = attrs.field(default=0, validator=_non_negative_int)
    borrow_timeout: float = attrs.field(default=120.0, validator=_positive((int, float)))
    max_lifetime: float = attrs.field(default=3600.0, validator=_positive((int, float)))
    idle_timeout: float = attrs.field(default=600.0, validator=_positive((int, float)))
    # Prepared statements kept per backend connection; keep users x
    # max_connections x this under the server's max_prepared_stmt_count
    # (16382 by default).  0 sizes it from that default.
    statement_cache: int = attrs.field(default=0, validator=_non_negative_int)
    # Instead of max_connections: this share (1-100) of the server's
    # max_connections, divided among the users (like MaxConnectionsPercent).
    max_connections_percent: int = attrs.field(default=0, validator=_non_negative_int)


@attrs.frozen
class HealthConfig:
    # Seconds between checks of idle connections and probes of each target.
    interval: float = attrs.field(default=10.0, validator=_positive((int, float)))
    # Seconds a probe (login and the read_only query) may take.
    connect_timeout: float = attrs.field(default=5.0, validator=_positive((int, float)))
    # Failed probes in a row that mark a target down.
    failure_threshold: int = attrs.field(default=2, validator=_positive(int))
    # Cap, in seconds, of the growing delay between probes of a down target.
    backoff_max: float = attrs.field(default=10.0, validator=_positive((int, float)))
    # The account probes log in as (it needs no privileges); "" means the
    # first [[users]] entry with a password (not only a password_hash), with
    # that password, else the [auth] lookup account.
    user: str = attrs.field(default="", validator=_string)
    password: str = attrs.field(default="", validator=_string, repr=False)


def _names(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
            isinstance(item, str) for item in value):
        raise ConfigError(f"must be a list of names, got {value!r}")
    return tuple(item.lower() for item in value)


@attrs.frozen
class SessionConfig:
    # Session variables whose SET neither pins nor is carried (like RDS Proxy's
    # session pinning filters): the value stays on whichever backend
    # connection ran the SET and may be seen by the next client to borrow it.
    ignore_variables: tuple[str, ...] = attrs.field(default=(), converter=_names)
    # Seconds a connection stays with a client after a statement that left
    # warnings, an error or affected rows, for a SHOW WARNINGS or ROW_COUNT()
    # that follows; an idle client gives it back after that.
    hold_for_next_statement: float = attrs.field(default=1.0, validator=_positive((int, float)))
    # Seconds between reads of the stored routines, triggers and views a
    # statement can run unseen (pyproxy.routines), for changes made other than
    # through pyproxy; 0 reads them only at start and after such DDL.
    routine_refresh: float = attrs.field(default=60.0, validator=_non_negative_number)


@attrs.frozen
class LogConfig:
    level: str = attrs.field(default="info", validator=attrs.validators.in_(
        ("debug", "info", "warning", "error")))
    format: str = attrs.field(default="auto", validator=attrs.validators.in_(
        ("auto", "json", "console")))
    # Seconds during which every COM_QUERY and COM_STMT_PREPARE is logged as a
    # ``statement`` event with its digest (values replaced by ?, never shown),
    # after start or a reload that changes it; then it switches itself off.
    # 0 = off.  Needs level "info" or "debug".
    debug_statements_for: float = attrs.field(default=0.0, validator=_non_negative_number)


@attrs.frozen
class MetricsConfig:
    # Where Prometheus scrapes /metrics, a Twisted endpoint such as
    # "tcp:9180:interface=127.0.0.1"; "" leaves the page off.  It shows
    # counts and states only, but anyone who reaches it learns the user
    # names and servers, so keep it on a private interface.
    listen: str = attrs.field(default="", validator=_optional_endpoint)


@attrs.frozen
class AdminConfig:
    """The admin console (pyproxy.admin): SHOW POOLS, PAUSE, RELOAD... over the
    MySQL protocol, with an account of its own.  It runs only when ``user``
    is set, so that no pyproxy opens a second port it was not asked for."""

    # A Twisted endpoint; loopback by default: the console can pause, reload
    # and stop pyproxy.
    listen: str = attrs.field(default="tcp:6034:interface=127.0.0.1", validator=_optional_endpoint)
    # The console's own account, known nowhere else (not a [[users]] entry,
    # not a server account); "" leaves the console off.
    user: str = attrs.field(default="", validator=_string)
    password: str = attrs.field(default="", validator=_string, repr=False)
    # Instead of the password: its stored form ('*' and 40 hex digits, as
    # pyproxy-hash-password prints it); the client must then use
    # mysql_native_password.
    password_hash: str = attrs.field(default="", validator=_stored_hash, repr=False)

    @property
    def enabled(self) -> bool:
        return bool(self.user and self.listen)


@attrs.frozen
class UserConfig:
    name: str = attrs.field(validator=_string)
    password: str = attrs.field(default="", validator=_string, repr=False)
    # Instead of the password: its stored form, as mysql.user holds it
    # (pyproxy.auth.stored_hash); clients must then use mysql_native_password.
    password_hash: str = attrs.field(default="", validator=_stored_hash, repr=False)


@attrs.frozen
class AwsConfig:
    """Where pyproxy's own AWS calls go; credentials come from boto3's usual
    chain (environment, instance or task role, ~/.aws)."""

    # "" = boto3's default (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config).
    region: str = attrs.field(default="", validator=_string)
    # "" = AWS's own endpoints; the tests point it at moto.
    endpoint_url: str = attrs.field(default="", validator=_url)
    # Seconds between fetches of the [[secrets]]; a backend login they made
    # that the server refuses fetches them again at once.
    secrets_refresh: float = attrs.field(default=300.0, validator=_positive((int, float)))


_REDIS_URL = re.compile(r"rediss?://[A-Za-z0-9.\-]+(:\d{1,5})?(/\d{1,2})?")


def _redis_url(instance: object, attribute: attrs.Attribute, value: object) -> None:
    if not isinstance(value, str) or not (value == "" or _REDIS_URL.fullmatch(value)):
        raise _bad(attribute, 'must be "" or redis://HOST[:PORT][/DB] (a password goes in '
                              'budget.redis_password)', value)


@attrs.frozen
class BudgetConfig:
    """One backend budget across pyproxy instances on several hosts, kept in Redis as
    leases that expire when their instance dies (pyproxy.redis_budget)."""

    # "" = off: each instance (or each host's workers) has the whole budget to itself.
    redis: str = attrs.field(default="", validator=_redis_url)
    redis_password: str = attrs.field(default="", validator=_string, repr=False)
    # Seconds a lease outlives its instance's last renewal (renewed every third of it).
    lease_seconds: float = attrs.field(default=10.0, validator=_positive((int, float)))
    # Connections per pool this instance may hold while Redis cannot be reached.
    local_share: int = attrs.field(default=1, validator=_positive(int))
    # Prefix of the keys pyproxy keeps in Redis (instances sharing a budget use the same).
    prefix: str = attrs.field(default="pyproxy", validator=_name)


@attrs.frozen
class SecretConfig:
    """One Secrets Manager secret holding RDS-style JSON: username, password."""

    arn: str = attrs.field(validator=_secret_arn)


@attrs.frozen
class AuthConfig:
    # Users not in [[users]] or [[secrets]] are checked against the server's
    # own mysql_native_password hash, read over the lookup account.
    lookup: bool = attrs.field(default=False, validator=_bool)
    lookup_user: str = attrs.field(default="", validator=_string)
    lookup_password: str = attrs.field(default="", validator=_string, repr=False)
    # Seconds a looked-up hash (or "no such user") is kept.
    lookup_cache: float = attrs.field(default=30.0, validator=_positive((int, float)))
    # Wrong passwords per source address (pyproxy.throttle): after
    # max_failures refused logins within failure_window seconds, every answer
    # to a login from that address waits failure_delay seconds more per further
    # failure, at most failure_delay_max (and at most half of [proxy]
    # handshake_timeout, so a delayed answer still comes in time).
    # Nobody is locked out; other addresses are never delayed.  0 turns it off.
    failure_delay: float = attrs.field(default=1.0, validator=_non_negative_number)
    max_failures: int = attrs.field(default=5, validator=_positive(int))
    failure_window: float = attrs.field(default=60.0, validator=_positive((int, float)))
    failure_delay_max: float = attrs.field(default=5.0, validator=_positive((int, float)))


@attrs.frozen
class IamRoleConfig:
    """Clients whose verified IAM identity is ``arn`` (or a session of that
    role) may log in as database user ``user``."""

    arn: str = attrs.field(validator=_iam_arn)
    user: str = attrs.field(validator=_name)


@attrs.frozen
class IamConfig:
    # The value of the x-pyproxy-audience header a client's token must sign,
    # so a token made for another service is refused here.
    audience: str = attrs.field(default="pyproxy", validator=_name)
    # The STS endpoints tokens may be sent to; [] = AWS's own, global and
    # regional, over https (https://sts.eu-west-1.amazonaws.com...).
    sts_endpoints: tuple[str, ...] = attrs.field(default=(), converter=_urls)
    # [[iam.roles]]: which identity may log in as which user.
    roles: tuple[IamRoleConfig, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class Config:
    proxy: ProxyConfig = ProxyConfig()
    backend: BackendConfig = BackendConfig()
    pool: PoolConfig = PoolConfig()
    health: HealthConfig = HealthConfig()
    session: SessionConfig = SessionConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    admin: AdminConfig = AdminConfig()
    aws: AwsConfig = AwsConfig()
    auth: AuthConfig = AuthConfig()
    iam: IamConfig = IamConfig()
    budget: BudgetConfig = BudgetConfig()
    tls: TlsConfig = TlsConfig()
    users: tuple[UserConfig, ...] = ()
    secrets: tuple[SecretConfig, ...] = ()

    def user(self, name: str) -> UserConfig | None:
        for user in self.users:
            if user.name == name:
                return user
        return None


SECTIONS: dict[str, type] = {
    "proxy": ProxyConfig, "backend": BackendConfig, "pool": PoolConfig,
    "health": HealthConfig, "session": SessionConfig, "log": LogConfig, "metrics": MetricsConfig,
    "admin": AdminConfig, "aws": AwsConfig, "auth": AuthConfig, "iam": IamConfig, "budget": BudgetConfig,
    "tls": TlsConfig,
}
# Keys holding arrays of tables, read by a function of their own.
TABLE_ARRAYS = {(BackendConfig, "targets"), (IamConfig, "roles")}

ENV_PREFIX = "PYPROXY_"


def _coerce_env(cls: type, key: str, text: str) -> object:
    """Environment values are strings; give them the type the default has.
    A list is written comma-separated (PYPROXY_SESSION_IGNORE_VARIABLES=a,b);
    backend.targets and iam.roles keep their own "host:port:role,..." and
    "arn=user,..." forms."""
    field = attrs.fields_dict(cls)[key]
    default = field.default
    if isinstance(default, tuple) and (cls, key) not in TABLE_ARRAYS:
        return [item.strip() for item in text.split(",") if item.strip()]
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(text)
        except ValueError:
            return text
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError:
            return text
    return text


USERS_VARIABLE = f"{ENV_PREFIX}USERS"
SECRETS_VARIABLE = f"{ENV_PREFIX}SECRETS"
# The names that are configuration: PYPROXY_<SECTION>_... for the sections
# above, PYPROXY_USER... (PYPROXY_USERS and its misspellings) and
# PYPROXY_SECRET...  Any other PYPROXY_ name (the test suite's
# PYPROXY_TEST_*, say) is not pyproxy's to judge.
CONFIG_PREFIXES = (*(f"{ENV_PREFIX}{section.upper()}_" for section in SECTIONS), f"{ENV_PREFIX}USER",
                   f"{ENV_PREFIX}SECRET")


def env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, object]]:
    """PYPROXY_<SECTION>_<KEY> for every key, e.g. PYPROXY_POOL_MAX_CONNECTIONS;
    PYPROXY_USERS="name:password,name2:password2" replaces the user list,
    PYPROXY_SECRETS="arn,arn2" the [[secrets]] list.

    Raises:
        ConfigError: a variable in the configuration's namespace (CONFIG_PREFIXES)
            names no key, as a misspelled key in the file would.
    """
    out: dict[str, dict[str, object]] = {}
    known = {USERS_VARIABLE, SECRETS_VARIABLE}
    for section, cls in SECTIONS.items():
        for key in attrs.fields_dict(cls):
            name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            known.add(name)
            if name in environ:
                out.setdefault(section, {})[key] = _coerce_env(cls, key, environ[name])
    for name in sorted(environ):
        if name.startswith(CONFIG_PREFIXES) and name not in known:
            raise ConfigError(f"unknown environment variable {name}: no such key "
                              f"(PYPROXY_<SECTION>_<KEY>, {USERS_VARIABLE} or {SECRETS_VARIABLE})")
    if USERS_VARIABLE in environ:
        users = []
        for item in environ[USERS_VARIABLE].split(","):
            if item.strip():
                name, _, password = item.strip().partition(":")
                users.append({"name": name, "password": password})
        out["users"] = users  # type: ignore[assignment]
    if SECRETS_VARIABLE in environ:
        out["secrets"] = [{"arn": item.strip()}  # type: ignore[assignment]
                          for item in environ[SECRETS_VARIABLE].split(",") if item.strip()]
    return out


def _describe(exc: ValueError) -> str:
    """attrs' own validators put the message in args[0], then the attribute, the
    allowed values and the value."""
    if isinstance(exc, ConfigError) or len(exc.args) < 4:
        return str(exc)
    attribute, allowed, value = exc.args[1:4]
    got = (_kind(value) if names_a_secret(getattr(attribute, "name", "")) else repr(value))
    return f"must be one of {', '.join(map(str, allowed))}, got {got}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _targets(backend: Mapping[str, Any]) -> tuple[TargetConfig, ...]:
    """[[backend.targets]] (or "host:port:role,..." from the environment),
    checked so that something can take writes and no server is named twice."""
    raw = backend["targets"]
    if isinstance(raw, str):
        raw = [dict(zip(("host", "port", "role"), _split_target(item)))
               for item in raw.split(",") if item.strip()]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("backend.targets must be a non-empty array of tables ([[backend.targets]])")
    if "host" in backend or "port" in backend:
        raise ConfigError("backend.host/backend.port and [[backend.targets]] exclude each other")
    targets, seen = [], set()
    for index, entry in enumerate(raw):
        where = f"backend.targets[{index}]"
        if not isinstance(entry, Mapping) or "host" not in entry:
            raise ConfigError(f"{where}.host is required")
        for key, value in entry.items():
            if key not in ("host", "port", "role"):
                raise ConfigError(f"unknown key {where}.{key}")
            try:
                TargetConfig(**{"host": "x", key: value})
            except ValueError as exc:
                raise ConfigError(f"{where}.{key}: {_describe(exc)}") from None
        target = TargetConfig(**entry)
        if target.name in seen:
            raise ConfigError(f"{where}: {target.name} is listed twice")
        seen.add(target.name)
        targets.append(target)
    if all(target.role == "reader" for target in targets):
        raise ConfigError("backend.targets: no target with role writer or auto, so nothing could take writes")
    return tuple(targets)


def _iam_roles(raw: object) -> tuple[IamRoleConfig, ...]:
    """[[iam.roles]] (or "arn=user,..." from the environment)."""
    if isinstance(raw, str):
        raw = [dict(zip(("arn", "user"), item.strip().rsplit("=", 1)))
               for item in raw.split(",") if item.strip()]
    return tuple(_table_array("iam.roles", raw, IamRoleConfig))


def _table_array(where: str, raw: object, cls: type) -> list[Any]:
    """Each entry of an array of tables as ``cls``, the first bad key named."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be an array of tables ([[{where}]])")
    fields = attrs.fields_dict(cls)
    required = [name for name, field in fields.items() if field.default is attrs.NOTHING]
    entries = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}[{index}] must be a table")
        for key in required:
            if key not in entry:
                raise ConfigError(f"{where}[{index}].{key} is required")
        for key, value in entry.items():
            field = fields.get(key)
            if field is None:
                raise ConfigError(f"unknown key {where}[{index}].{key}")
            try:
                if field.validator is not None:
                    field.validator(None, field, value)
            except ValueError as exc:
                raise ConfigError(f"{where}[{index}].{key}: {_describe(exc)}") from None
        entries.append(cls(**entry))
    return entries


def _split_target(item: str) -> tuple[object, ...]:
    host, _, rest = item.strip().partition(":")
    port, _, role = rest.partition(":")
    parts: list[object] = [host]
    if port:
        parts.append(int(port) if port.isdigit() else port)
    if role:
        parts.append(role)
    return tuple(parts)


def build(data: Mapping[str, Any], problems: list[str] | None = None) -> Config:
    """Turns a parsed TOML document into a Config, naming the first bad key.

    Args:
        problems: if given, every problem is appended to it (one line each, for
            ``pyproxy check-config``) instead of the first being raised; what is
            at fault is left out of the Config returned.

    Raises:
        ConfigError: without ``problems``, for the first bad key.
    """

    def report(message: str) -> None:
        if problems is None:
            raise ConfigError(message)
        problems.append(message)

    sections: dict[str, object] = {}
    for section, values in data.items():
        if section in ("users", "secrets"):
            continue
        cls = SECTIONS.get(section)
        if cls is None:
            report(f"unknown section [{section}]")
            continue
        if not isinstance(values, Mapping):
            report(f"[{section}] must be a table")
            continue
        known = attrs.fields_dict(cls)
        if section == "backend" and "targets" in values:
            try:
                values = {**values, "targets": _targets(values)}
            except ConfigError as exc:
                report(str(exc))
                values = {key: value for key, value in values.items() if key != "targets"}
        if section == "iam" and "roles" in values:
            try:
                values = {**values, "roles": _iam_roles(values["roles"])}
            except ConfigError as exc:
                report(str(exc))
                values = {key: value for key, value in values.items() if key != "roles"}
        good = {}
        for key, value in values.items():
            if key not in known:
                report(f"unknown key {section}.{key}")
                continue
            try:
                cls(**{key: value})
            except ValueError as exc:
                report(f"{section}.{key}: {_describe(exc)}")
                continue
            except TypeError:
                pass  # a required sibling is missing; checked below
            good[key] = value
        try:
            sections[section] = cls(**good)
        except ValueError as exc:
            report(f"[{section}]: {_describe(exc)}")
    try:
        entries = _table_array("users", data.get("users", []), UserConfig)
    except ConfigError as exc:
        report(str(exc))
        entries = []
    users = []
    seen = set()
    for index, user in enumerate(entries):
        if user.name in seen:
            report(f"users[{index}].name: duplicate user {user.name!r}")
            continue
        seen.add(user.name)
        if user.password and user.password_hash:
            report(f"users[{index}]: password and password_hash exclude each other")
            continue
        users.append(user)
    try:
        secrets = tuple(_table_array("secrets", data.get("secrets", []), SecretConfig))
    except ConfigError as exc:
        report(str(exc))
        secrets = ()
    arns = [secret.arn for secret in secrets]
    for index, arn in enumerate(arns):
        if arn in arns[:index]:
            report(f"secrets[{index}].arn: {arn} is listed twice")
    backend = sections.get("backend")
    if isinstance(backend, BackendConfig) and backend.database == "":
        sections["backend"] = attrs.evolve(backend, database=None)
    admin = sections.get("admin")
    if isinstance(admin, AdminConfig) and admin.user:
        if admin.password and admin.password_hash:
            report("admin: password and password_hash exclude each other")
        elif not admin.password and not admin.password_hash:
            report("admin.password: the admin console's user needs a password or a password_hash")
    auth = sections.get("auth")
    if isinstance(auth, AuthConfig) and auth.lookup and not auth.lookup_user:
        report("auth.lookup_user: lookup = true needs the account it reads hashes with")
    proxy, pool = sections.get("proxy"), sections.get("pool")
    if isinstance(proxy, ProxyConfig) and proxy.worker_count() > 1:
        workers = proxy.worker_count()
        if isinstance(pool, PoolConfig) and not pool.max_connections_percent \
                and pool.max_connections < workers:
            report(f"pool.max_connections: {pool.max_connections} cannot be shared by {workers} "
                   "workers (each needs at least one connection per pool)")
    tls = sections.get("tls")
    if isinstance(tls, TlsConfig):
        if bool(tls.cert) != bool(tls.key):
            report("tls.cert and tls.key: both are needed to offer TLS")
        elif tls.require and not tls.cert:
            report("tls.require: requiring TLS needs tls.cert and tls.key")
    return Config(**sections, users=tuple(users), secrets=secrets)  # type: ignore[arg-type]


NO_USERS = "no [[users]], [[secrets]] or [auth] lookup configured: clients could not log in"
#: [backend] iam needs TLS to the server: pyproxy refuses to start without it
#: (pyproxy.tap.start_checks).
BACKEND_IAM_NEEDS_TLS = ("backend.iam: RDS IAM tokens travel as mysql_clear_password, which pyproxy "
                         "sends only over TLS to the server: set [backend] tls = \"verify\"")


def can_log_in(config: Config) -> bool:
    """Whether any source of users is configured."""
    return bool(config.users or config.secrets or config.auth.lookup)


NO_PROBE_ACCOUNT = ("health.user: no [[users]] entry has a password and no [auth] lookup account is "
                    "configured, so the probes have no account to log in with; name a [health] user "
                    "(it needs no privileges)")


def _whole_problems(config: Config) -> list[str]:
    """What is wrong with the configuration as a whole (not with one key)."""
    if not can_log_in(config):
        return [NO_USERS]
    if not config.health.user and not config.auth.lookup and not any(
            not user.password_hash for user in config.users):
        return [NO_PROBE_ACCOUNT]
    return []


def _read(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load(path: str | None, environ: Mapping[str, str] | None = None,
         overrides: Mapping[str, Mapping[str, object]] | None = None) -> Config:
    """Reads the file, applies environment variables, then explicit overrides.

    Raises:
        ConfigError: with one line naming the file or key at fault.
    """
    data = _merge(_read(path), env_overrides(os.environ if environ is None else environ))
    if overrides:
        data = _merge(data, overrides)
    config = build(data)
    for problem in _whole_problems(config):
        raise ConfigError(problem)
    return config


def check(path: str, environ: Mapping[str, str] | None = None) -> tuple[Config | None, list[str]]:
    """Everything wrong with a configuration file (and the PYPROXY_* variables
    that would apply to it), one line per problem, as ``pyproxy check-config``
    shows it; the Config only when there is none."""
    try:
        data = _read(path)
    except ConfigError as exc:
        return None, [str(exc)]
    problems: list[str] = []
    try:
        data = _merge(data, env_overrides(os.environ if environ is None else environ))
    except ConfigError as exc:
        problems.append(str(exc))
    config = build(data, problems)
    if not any(problem.startswith(("users", "unknown key users", "secrets")) for problem in problems):
        problems.extend(_whole_problems(config))
    return (None if problems else config), problems


def secrets(config: Config) -> frozenset[str]:
    """Every secret the configuration holds (passwords, by key name), so that the
    logs can drop any field whose value is one of them, whatever its name."""
    found: set[str] = set()

    def walk(value: object, name: str) -> None:
        if attrs.has(type(value)):
            for field in attrs.fields(type(value)):
                walk(getattr(value, field.name), field.name)
        elif isinstance(value, tuple):
            for item in value:
                walk(item, name)
        elif isinstance(value, str) and value and names_a_secret(name):
            found.add(value)

    walk(config, "")
    # [tls] key names a file, not a secret: its path may show in log lines.
    found.discard(config.tls.key)
    return frozenset(found)
