"""``python -m pyproxy``: the ``pyproxy`` command (pyproxy.cli)."""

import sys

from pyproxy.cli import main

sys.exit(main())
