"""Why the simulator cannot listen on a PLC's address, told in one line for the operator."""

from __future__ import annotations

import errno
import socket

IN_USE = "address already in use"


class ServeError(Exception):
    """The simulator cannot serve: one line that names the address and what to do."""


def listen_error(host: str, port: int, what: str, cause: BaseException | None = None) -> ServeError:
    """The ServeError for a server (`what`: protocol and PLC names) that could not listen on
    host:port; the reason is found again by binding the address, as the server's library hides it."""
    reason = _bind_problem(host, port) or (str(cause) if cause else "the server did not start")
    if reason == IN_USE:
        todo = (f"stop what holds it (`ss -ltnp 'sport = :{port}'` names it: another simulator?) "
                "or give the PLC another port in the scenario")
    else:
        todo = "check host and port of the PLC in the scenario"
    return ServeError(f"cannot listen on {host}:{port} for {what}: {reason}; {todo}")


def _bind_problem(host: str, port: int) -> str | None:
    """What binding host:port says now, or None when it works."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no problem
        try:
            s.bind(addr)
        except OSError as exc:
            return IN_USE if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
    return None
