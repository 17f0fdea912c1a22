"""Protocol constants: PyMySQL's, plus the ones it does not define."""

from pymysql.constants import CLIENT, COMMAND, CR, ER, SERVER_STATUS  # noqa: F401

# Capability flags PyMySQL does not name.
CLIENT_QUERY_ATTRIBUTES = 1 << 27
CLIENT_MYSQL = CLIENT.LONG_PASSWORD  # MariaDB: cleared bit means "extended caps in filler"

# MariaDB's extended capabilities, bits 32-63 of pyproxy's capability integers.
# A MariaDB server announces them in the last 4 bytes of the greeting's filler
# when it clears CLIENT_MYSQL; a client answers with its own in the last 4
# bytes of the HandshakeResponse41's 23-byte filler when it clears CLIENT_MYSQL.
MARIADB_CLIENT_PROGRESS = 1 << 32
MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 34
MARIADB_CLIENT_EXTENDED_METADATA = 1 << 35
MARIADB_CLIENT_CACHE_METADATA = 1 << 36
MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 37

# Server status flags beyond PyMySQL's list.
SERVER_STATUS_IN_TRANS = SERVER_STATUS.SERVER_STATUS_IN_TRANS
SERVER_STATUS_AUTOCOMMIT = SERVER_STATUS.SERVER_STATUS_AUTOCOMMIT
SERVER_MORE_RESULTS_EXISTS = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS
SERVER_STATUS_CURSOR_EXISTS = SERVER_STATUS.SERVER_STATUS_CURSOR_EXISTS
SERVER_STATUS_LAST_ROW_SENT = SERVER_STATUS.SERVER_STATUS_LAST_ROW_SENT
SERVER_STATUS_IN_TRANS_READONLY = 0x2000
SERVER_STATUS_NO_BACKSLASH_ESCAPES = SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES
SERVER_SESSION_STATE_CHANGED = 0x4000

# Session-state-tracking entry types carried in OK packets.
SESSION_TRACK_SYSTEM_VARIABLES = 0
SESSION_TRACK_SCHEMA = 1
SESSION_TRACK_STATE_CHANGE = 2
SESSION_TRACK_GTIDS = 3
SESSION_TRACK_TRANSACTION_CHARACTERISTICS = 4
SESSION_TRACK_TRANSACTION_STATE = 5

COM_RESET_CONNECTION = 0x1F
# MariaDB: a prepared statement run once per row of parameters sent with it.
COM_STMT_BULK_EXECUTE = 0xFA
# COM_STMT_BULK_EXECUTE flags: parameter types follow, and (with
# MARIADB_CLIENT_BULK_UNIT_RESULTS) a result set per row instead of one OK.
BULK_SEND_TYPES = 128
BULK_UNIT_RESULTS = 64
# A statement id meaning "the statement this connection prepared last".
LAST_PREPARED = 0xFFFFFFFF
SERVER_PS_OUT_PARAMS = 0x1000

# COM_SET_OPTION arguments.
MYSQL_OPTION_MULTI_STATEMENTS_ON = 0
MYSQL_OPTION_MULTI_STATEMENTS_OFF = 1

MAX_PAYLOAD = 0xFFFFFF


# Errors pyproxy itself sends (code, SQLSTATE).
ER_CON_COUNT_ERROR = (1040, "08004")
ER_HANDSHAKE_ERROR = (1043, "08S01")
ER_ACCESS_DENIED_ERROR = (1045, "28000")
ER_UNKNOWN_COM_ERROR = (1047, "08S01")
ER_NET_PACKET_TOO_LARGE = (1153, "08S01")
ER_NET_PACKETS_OUT_OF_ORDER = (1156, "08S01")
ER_NOT_SUPPORTED_AUTH_MODE = (1251, "08004")
ER_UNKNOWN_STMT_HANDLER = (1243, "HY000")
ER_SECURE_TRANSPORT_REQUIRED = (3159, "HY000")
CR_CONN_HOST_ERROR = (2003, "HY000")
CR_SSL_CONNECTION_ERROR = (2026, "HY000")
CR_SERVER_LOST = (2013, "HY000")
# pyproxy's own: no backend connection could be borrowed in time.
ER_PROXY_BORROW_TIMEOUT = (9001, "HY000")
# pyproxy's own: a transaction lost with its backend connection must be
# rolled back by the client before anything else runs (class 40: rollback).
ER_PROXY_TRANSACTION_LOST = (9002, "40000")
