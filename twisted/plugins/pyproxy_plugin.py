from twisted.application.service import ServiceMaker

pyproxy = ServiceMaker(
    "pyproxy",
    "pyproxy.tap",
    "A MySQL/MariaDB connection-pooling proxy",
    "pyproxy",
)
