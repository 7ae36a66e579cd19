"""What cipherfeed's processes log, and what they keep out of it.

- :func:`configure`: ``CIPHERFEED_LOG_LEVEL`` for cipherfeed's own loggers (``feed``, ``jobs``), written to standard
  error with a time; a process's first call wins.
- :class:`PrivateAccessLog`: uvicorn's access and error logs without what would say who read what: a request is
  logged by its path only (no query string: it may carry a token, a search, any text a client put in a link), and
  the client's address cut to its network (an IPv4 /24, an IPv6 /48) with no port.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys

OWN_LOGGERS = ("feed", "jobs")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_QUERY = re.compile(r"\?[^\s\"]*")
_ADDRESS = re.compile(r"^\[?([0-9A-Fa-f:.]+?)\]?(?::\d+)?$")


def configure(level: str) -> None:
    """Send cipherfeed's own log lines at ``level`` and above to standard error."""
    for name in OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        if not any(getattr(h, "cipherfeed", False) for h in logger.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter(FORMAT))
            handler.cipherfeed = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
            logger.propagate = False


def network_of(client: str) -> str:
    """A client address as the access log keeps it: its network, not the host (``203.0.113.0/24``)."""
    found = _ADDRESS.match(client.strip())
    if not found:
        return "-"
    try:
        address = ipaddress.ip_address(found.group(1))
    except ValueError:
        return "-"
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def without_query(target: str) -> str:
    return _QUERY.sub("", target)


class PrivateAccessLog(logging.Filter):
    """For uvicorn's loggers: the access line keeps the path and the client's network; any other line loses the
    query strings of the addresses it names."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, tuple):
            return True
        if record.name == "uvicorn.access" and len(args) == 5:
            client, method, target, version, status = args
            record.args = (network_of(str(client)), method, without_query(str(target)), version, status)
        else:
            record.args = tuple(without_query(a) if isinstance(a, str) else a for a in args)
        return True


def private_server_logs() -> None:
    """Put :class:`PrivateAccessLog` on uvicorn's loggers (once)."""
    for name in ("uvicorn.access", "uvicorn.error"):  # the latter logs WebSocket handshakes
        server_log = logging.getLogger(name)
        if not any(isinstance(f, PrivateAccessLog) for f in server_log.filters):
            server_log.addFilter(PrivateAccessLog())
