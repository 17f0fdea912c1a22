"""The phases of a client connection, in order: which code its next packet goes to.

HANDSHAKE and AUTH_SWITCH are the login phase's (pyproxy.login), COMMANDS
the command phase's (pyproxy.command_phase and the modules it consults), CLOSED
is final.  A value of their own so that every module that acts on a client
can check it without importing the protocol.
"""

HANDSHAKE, AUTH_SWITCH, COMMANDS, CLOSED = range(4)
