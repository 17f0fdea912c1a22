# pyproxy as a container image.  Linted by tests/test_packaging.py (hadolint);
# no Docker engine runs where pyproxy is developed, so the image is not built
# there.
#
#   docker build -t pyproxy .
#   docker run -p 3306:3306 -v "$PWD/pyproxy.toml:/etc/pyproxy/pyproxy.toml:ro" pyproxy
#   docker run -v "$PWD/pyproxy.toml:/etc/pyproxy/pyproxy.toml:ro" pyproxy \
#       check-config /etc/pyproxy/pyproxy.toml
#
# The configuration may also come from PYPROXY_* variables alone
# (docker run -e PYPROXY_BACKEND_HOST=db -e PYPROXY_USERS=app:secret ...
# pyproxy run).  Prometheus metrics are on port 9180 (the health check reads
# them): keep that port off public networks.
FROM python:3.11-slim-bookworm

# PYPROXY_METRICS_LISTEN: /metrics is served on 9180 whatever the mounted
# config says, for the health check below.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYPROXY_METRICS_LISTEN=tcp:9180

WORKDIR /usr/src/pyproxy
COPY setup.cfg setup.py pyproject.toml README.rst ./
COPY packaging/build_backend.py ./packaging/
COPY pyproxy ./pyproxy
COPY twisted ./twisted
# A regular install (not editable) copies the twistd plugin into Twisted's
# own twisted/plugins, so "twistd pyproxy" works too; its plugin cache is
# written now, while the image is still writable by root.
RUN pip install --no-cache-dir . \
    && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && groupadd --system --gid 10001 pyproxy \
    && useradd --system --uid 10001 --gid pyproxy --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pyproxy

# Every key with its default, to copy from; the config itself is mounted at
# /etc/pyproxy/pyproxy.toml (or given as PYPROXY_* variables).
COPY pyproxy.example.toml /etc/pyproxy/pyproxy.example.toml
WORKDIR /

# Numeric, so that the host and Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
EXPOSE 3306 9180

# A scrape is answered by pyproxy's own reactor thread, so it fails when
# pyproxy hangs, not only when it is gone.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9180/metrics', timeout=4)"]

# twistd stops on SIGTERM after letting open transactions finish
# ([proxy] drain_timeout): give docker stop at least that long (--time).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pyproxy"]
CMD ["run", "--config", "/etc/pyproxy/pyproxy.toml"]
