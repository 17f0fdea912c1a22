"""``twistd pyproxy``: Twisted finds this module in a ``twisted/plugins`` directory on sys.path.

A regular install copies it into Twisted's own ``twisted/plugins``; an editable install puts
the project root on sys.path (see ``package_dir`` in setup.cfg).  Everything else lives in
pyproxy.tap, imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

pyproxy = ServiceMaker(
    "pyproxy",
    "pyproxy.tap",
    "A MySQL/MariaDB connection-pooling proxy",
    "pyproxy",
)
