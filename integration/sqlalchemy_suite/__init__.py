"""SQLAlchemy's own dialect compliance suite, run directly and through pyproxy (see ``suite``)."""
