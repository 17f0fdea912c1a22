"""MariaDB's own regression tests (Debian package ``mariadb-test``) run through pyproxy.

``tests.txt`` lists the tests, ``suite.py`` runs them with the ``mariadb-test`` client and sets
up a server the way ``mariadb-test-run.pl`` would, ``run.py`` is the command line, and
``integration/test_mariadb_suite.py`` the pytest that compares direct runs with runs through
pyproxy.  ``t/`` and ``r/`` hold pyproxy's own tests in the same format.
"""
