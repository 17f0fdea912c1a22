"""Small commands around the credentials: ``pyproxy-hash-password`` and ``pyproxy-token``.

Each is a ``main(argv, ...)`` returning an exit status, installed as a
console script by setup.cfg, with its streams injectable so the tests run
it in-process; a future ``pyproxy`` command with sub-commands can call them
as they are.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from pyproxy import auth


def hash_password(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None,
                  stdout: TextIO | None = None, stderr: TextIO | None = None,
                  prompt: Callable[[str], str] = getpass.getpass,
                  prog: str = "pyproxy-hash-password") -> int:
    """Prints the stored form of a password for ``[[users]] password_hash``.

    The password is never an argument, where ``ps`` and the shell history
    would keep it: it is asked for twice on a terminal, or read as the first
    line of standard input (``printf '%s' "$PW" | pyproxy-hash-password``).
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print the stored form of a mysql_native_password password ('*' and 40 hex "
                    "digits, as mysql.user holds it) for [[users]] password_hash.  The password "
                    "is asked for on a terminal, or read from the first line of standard input.")
    parser.parse_args(argv)
    if stdin.isatty():
        password = prompt("Password: ")
        if prompt("Again: ") != password:
            print(f"{prog}: the two passwords differ", file=stderr)
            return 1
    else:
        password = stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print(f"{prog}: an empty password has no hash; leave password_hash out "
              "for an account without a password", file=stderr)
        return 1
    print(auth.stored_hash(password.encode("utf-8")), file=stdout)
    return 0


def token(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
          prog: str = "pyproxy-token") -> int:
    """Prints a token to log in to pyproxy with as an IAM identity (the password,
    sent with mysql_clear_password over TLS).  Signed with boto3's usual
    credentials (environment, role, ~/.aws); nothing is sent to AWS."""
    from pyproxy import iam

    stdout = stdout or sys.stdout
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print a pyproxy IAM token: a presigned STS GetCallerIdentity request that "
                    "pyproxy sends to STS to learn who signed it.  Valid for 15 minutes.")
    parser.add_argument("--audience", default="pyproxy", help="pyproxy's [iam] audience (default: pyproxy)")
    parser.add_argument("--region", default=None, help="the STS region to sign for (default: boto3's)")
    parser.add_argument("--endpoint-url", default=None,
                        help="an STS endpoint pyproxy trusts ([iam] sts_endpoints), if not AWS's")
    parser.add_argument("--expires-in", type=int, default=iam.MAX_TOKEN_AGE,
                        help="seconds the token is valid (at most 900 count)")
    args = parser.parse_args(argv)
    print(iam.make_token(args.audience, region=args.region, endpoint_url=args.endpoint_url,
                         expires_in=args.expires_in), file=stdout)
    return 0
