"""The benchmark behind ``python3 bench/run.py``, one module per concern; the end of run.py's
docstring says which module holds what. ``hotpath.py`` stands apart: a script of its own.
"""
