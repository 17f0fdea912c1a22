"""The admin console with ``[proxy] workers``: one console for the whole pyproxy, on the supervisor.

The supervisor owns ``[admin] listen`` and logs the admin account in with the same login phase
as a single pyproxy (pyproxy.admin.AdminProtocol), from its own copy of the configuration.
Each statement is then answered as follows (the rules of putting the answers together are
pyproxy.admin_merge's):

* SHOW POOLS, SHOW CLIENTS, SHOW SERVERS: every worker's rows, one after the other; their
  ``worker`` column says whose (backend connection ids are each worker's own);
* SHOW STATS: the workers' counters added up, with ``workers``, ``workers_answered`` and the
  supervisor's ``worker_restarts`` and ``budget_moves``;
* SHOW TARGETS, SHOW VERSION: the first worker's that answers (each worker probes the servers
  itself); SHOW CONFIG and SHOW HELP: the supervisor's own;
* PAUSE, RESUME, SET debug_statements_for: every worker; RELOAD: the supervisor's configuration
  first (a bad file stops it there), then every worker, as SIGHUP would; SHUTDOWN [GRACEFUL]:
  every worker, then the supervisor, as SIGTERM would;
* KILL CLIENT <id>: the worker that gave the id (pyproxy.admin_merge.owner).

A worker is asked over the control channel (``Supervisor.ask``, op ``admin``) and has
``ADMIN_TIMEOUT`` seconds to answer; one that is not running or does not answer in time, or
answers with an error, is a row of SHOW WARNINGS (the answer's warning count says there is
one) and a ``admin_partial_answer`` log event, never a wait.  When no worker can answer, the
statement gets error 1105 saying so.

A worker's side of it is ``carry_out()``: its own AdminConsole runs the command and the rows,
OK text or error go back as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from pyproxy import admin_merge as merge
from pyproxy.admin import (CLIENT_COLUMNS, ER_NO_SUCH_THREAD, ER_UNKNOWN_ERROR, POOL_COLUMNS, SERVER_COLUMNS,
                           STATS_COLUMNS, TARGET_COLUMNS, VERSION_COLUMNS, AdminConsole, AdminError,
                           AdminProtocol, Console, Done, Note, Table)
from pyproxy.admin_commands import Command
from pyproxy.config import Config, ConfigError
from pyproxy.logs import get_logger
from pyproxy.wire.resultset import Column, Value

if TYPE_CHECKING:
    from pyproxy.proxy import ServerInfo
    from pyproxy.workers import Gathered, Supervisor

#: Seconds the console waits for the workers' answers to one statement.
ADMIN_TIMEOUT = 5.0
#: The commands a worker carries out for the supervisor's console.  SHUTDOWN is not one: it
#: is the supervisor's own op ``shutdown``, so that the supervisor knows whom it told.
FORWARDED = frozenset({"show pools", "show clients", "show servers", "show targets", "show stats",
                       "show version", "pause", "resume", "reload", "kill client", "set debug_statements_for"})

Rows = list[list[Value]]


class WorkersConsole(Console):
    """The supervisor's console (see the module docstring).

    Args:
        supervisor: the pyproxy.workers.Supervisor, for its workers, its ``ask()``, its
            configuration and its controls (reload, shutdown).
        server: how the console greets (the server's version the start-up check read).
    """

    def __init__(self, supervisor: Supervisor, server: ServerInfo, timeout: float = ADMIN_TIMEOUT) -> None:
        super().__init__()
        self.supervisor = supervisor
        self.server = server
        self.timeout = timeout
        self.log = get_logger(component="admin")
        # When the workers stop logging statements, as far as this console set it, for
        # @@debug_statements_for (SHOW STATS asks the workers).
        self._debug_until = 0.0
        self._reloaded(None, supervisor.config)  # type: ignore[arg-type]
        supervisor.reload_watchers.append(self._reloaded)

    @property
    def config(self) -> Config:  # type: ignore[override]
        return self.supervisor.config  # type: ignore[return-value]

    @property
    def reactor(self) -> Any:
        return self.supervisor.reactor

    def debug_seconds_left(self) -> float:
        return max(0.0, self._debug_until - self.reactor.seconds())

    def _debug_for(self, seconds: float) -> None:
        self._debug_until = self.reactor.seconds() + seconds if seconds else 0.0

    def _reloaded(self, old: Config | None, new: Config) -> None:
        """As each worker does (Proxy.start, Proxy.reconfigure): a changed [log]
        debug_statements_for starts over."""
        if old is None or old.log.debug_statements_for != new.log.debug_statements_for:
            self._debug_for(new.log.debug_statements_for)

    # -- asking the workers --------------------------------------------------------------

    def _ask(self, name: str, *args: Any, only: int | None = None) -> defer.Deferred[Gathered]:
        return self.supervisor.ask({"op": "admin", "command": name, "args": list(args)}, self.timeout,
                                   None if only is None else [only])

    def _notes(self, name: str, gathered: Gathered) -> list[Note]:
        """What SHOW WARNINGS lists for a statement the workers answered in part."""
        notes = (merge.missing(self.supervisor.count, gathered.asked, gathered.answers, self.timeout)
                 + merge.failed(gathered.answers))
        if notes:
            self.log.warning("admin_partial_answer", command=name, notes=[note[2] for note in notes])
        return notes

    def _nobody(self, gathered: Gathered) -> AdminError:
        """The error for a statement no worker carried out: the first worker's own
        error, or that none answered."""
        error = merge.first_error(gathered.answers)
        if error is not None:
            code, sqlstate, message = error
            return AdminError((code, sqlstate), message)
        if not gathered.asked:
            return AdminError(ER_UNKNOWN_ERROR, "no worker is running (they are being started again)")
        return AdminError(ER_UNKNOWN_ERROR, f"no worker answered within {self.timeout:g}s")

    def _table(self, name: str, columns: tuple[Column, ...],
               combine: Callable[[Mapping[int, Mapping[str, Any]]], Rows | None]) -> defer.Deferred[Table]:
        def made(gathered: Gathered) -> Table:
            if not merge.answered(gathered.answers, "rows"):
                raise self._nobody(gathered)
            return Table(columns, combine(gathered.answers) or [], self._notes(name, gathered))

        return self._ask(name).addCallback(made)

    def _control(self, name: str, *args: Any) -> defer.Deferred[Done]:
        def made(gathered: Gathered) -> Done:
            info = merge.one_info(gathered.answers)
            if info is None:
                raise self._nobody(gathered)
            return Done(info, warnings=self._notes(name, gathered))

        return self._ask(name, *args).addCallback(made)

    # -- the commands --------------------------------------------------------------------

    def do_show_pools(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        return self._table("show pools", POOL_COLUMNS, merge.concatenated)

    def do_show_clients(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        return self._table("show clients", CLIENT_COLUMNS, merge.concatenated)

    def do_show_servers(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        return self._table("show servers", SERVER_COLUMNS, merge.concatenated)

    def do_show_targets(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        return self._table("show targets", TARGET_COLUMNS, merge.first_rows)

    def do_show_version(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        return self._table("show version", VERSION_COLUMNS, merge.first_rows)

    def do_show_stats(self, connection: AdminProtocol) -> defer.Deferred[Table]:
        supervisor = self.supervisor

        def combine(answers: Mapping[int, Mapping[str, Any]]) -> Rows:
            rows: Rows = [[name, value] for name, value in merge.summed_stats(answers, supervisor.count)]
            rows.append(["worker_restarts", sum(supervisor.restarts.values())])
            rows.append(["budget_moves", supervisor.budget.moves])
            return rows

        return self._table("show stats", STATS_COLUMNS, combine)

    def do_pause(self, connection: AdminProtocol) -> defer.Deferred[Done]:
        return self._control("pause")

    def do_resume(self, connection: AdminProtocol) -> defer.Deferred[Done]:
        return self._control("resume")

    def do_set_debug_statements_for(self, connection: AdminProtocol, seconds: float) -> defer.Deferred[Done]:
        self._debug_for(seconds)
        return self._control("set debug_statements_for", seconds)

    def do_reload(self, connection: AdminProtocol) -> defer.Deferred[Done]:
        """As SIGHUP to the supervisor, but the workers reload over the control channel
        so that their answers (what changed, or why not) come back."""
        try:
            self.supervisor.reload_config()
        except ConfigError as exc:
            raise AdminError(ER_UNKNOWN_ERROR, f"reload failed, the running configuration stays: {exc}") from None
        self.supervisor.budget.reset()
        return self._control("reload")

    def do_kill_client(self, connection: AdminProtocol, client_id: int) -> defer.Deferred[Done]:
        index = merge.owner(client_id, self.supervisor.count)
        if index is None or index not in self.supervisor.workers:
            # Not an id any worker gives, or its worker is being started again: its clients
            # ended with it.
            raise AdminError(ER_NO_SUCH_THREAD, f"Unknown thread id: {client_id}")

        def made(gathered: Gathered) -> Done:
            answer = gathered.answers.get(index)
            if answer is None:
                raise AdminError(ER_UNKNOWN_ERROR, f"worker {index}, which serves client {client_id}, did not "
                                                   f"answer within {self.timeout:g}s")
            if "error" in answer:
                code, sqlstate, message = answer["error"]
                raise AdminError((int(code), str(sqlstate)), str(message))
            return Done(str(answer.get("info", "")))

        return self._ask("kill client", client_id, only=index).addCallback(made)

    def do_shutdown(self, connection: AdminProtocol, graceful: bool = False) -> Done:
        supervisor = self.supervisor
        return Done("shutting down" + (" once open transactions end" if graceful else ""),
                    then=lambda: supervisor.shut_down(graceful))


def carry_out(console: AdminConsole, message: Mapping[str, Any]) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """A worker's part of a statement of the supervisor's console: its own console
    runs it; returns the answer to send back (``rows``, ``info`` or ``error``) and
    what to run once it is sent (none of the forwarded commands has any today)."""
    name = str(message.get("command", ""))
    if name not in FORWARDED:
        return {"error": [*ER_UNKNOWN_ERROR, f"not a command a worker carries out: {name!r}"]}, None
    try:
        result = console.run(Command(name, tuple(message.get("args") or ())), None)
    except AdminError as exc:
        return {"error": [exc.code, exc.sqlstate, exc.message]}, None
    except Exception as exc:  # noqa: BLE001 - pyproxy's bug: an error to the console, not a dead worker
        get_logger(component="admin").error("admin_internal_error", command=name, error=repr(exc))
        return {"error": [*ER_UNKNOWN_ERROR, f"pyproxy internal error: {exc!r}"]}, None
    if isinstance(result, Table):
        return {"rows": [list(row) for row in result.rows]}, None
    assert isinstance(result, Done)  # an AdminConsole answers at once
    return {"info": result.info}, result.then
