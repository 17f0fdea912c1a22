"""pyproxy: a self-hosted MySQL/MariaDB connection-pooling proxy on Twisted."""

__version__ = "0.1.0"
