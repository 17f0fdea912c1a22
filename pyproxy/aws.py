"""pyproxy's own AWS calls: boto3 clients from ``[aws]``, run off the reactor thread.

boto3 blocks, so every call goes through a ``run_in_thread`` callable: in
pyproxy the reactor's thread pool (:func:`in_thread`), in tests anything
that returns a Deferred (a synchronous runner, or a real pool).  The code
path is the same against AWS and against a moto server: only
``[aws] endpoint_url`` differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import boto3
import botocore.config
from twisted.internet import defer, threads

from pyproxy.config import AwsConfig

T = TypeVar("T")
RunInThread = Callable[[Callable[[], T]], "defer.Deferred[T]"]

# Bounded: a Secrets Manager or STS that does not answer must not hold a
# thread of the pool for long.
CLIENT_CONFIG = botocore.config.Config(connect_timeout=5, read_timeout=10,
                                       retries={"max_attempts": 3, "mode": "standard"})


def client(service: str, config: AwsConfig) -> Any:
    """A boto3 client for ``service`` in ``[aws] region`` at ``[aws] endpoint_url``
    ("" = boto3's defaults); credentials from boto3's usual chain.  Creating one
    reads botocore's service models, so call it in a thread too."""
    session = boto3.session.Session(region_name=config.region or None)
    return session.client(service, endpoint_url=config.endpoint_url or None, config=CLIENT_CONFIG)


def in_thread(reactor: Any) -> RunInThread[Any]:
    """Runs a blocking call in the reactor's thread pool; fires with its result."""
    def run(call: Callable[[], T]) -> defer.Deferred[T]:
        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), call)
    return run


def synchronously(call: Callable[[], T]) -> defer.Deferred[T]:
    """Runs the call at once, in this thread (tests, and tools without a reactor)."""
    return defer.maybeDeferred(call)
