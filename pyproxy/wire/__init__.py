"""The MySQL client/server protocol as pure functions over bytes.

Nothing in this package performs I/O or imports Twisted, so every parser and
builder can be tested against byte vectors captured from a real server.
"""
