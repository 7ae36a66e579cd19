"""What the processes log: ``CIPHERFEED_LOG_LEVEL`` works for cipherfeed's own loggers (issue 12)."""

from __future__ import annotations

import subprocess
import sys

from feed.logs import network_of, without_query

PROBE = """
import logging
from feed.logs import configure
configure({level!r})
logging.getLogger("feed.relay").debug("a debug line")
logging.getLogger("feed.relay").info("an info line")
logging.getLogger("jobs.worker").warning("a warning line")
"""


def logged(level: str) -> str:
    found = subprocess.run(
        [sys.executable, "-c", PROBE.format(level=level)], capture_output=True, text=True, check=True
    )
    return found.stderr


def test_the_log_level_setting_reaches_our_own_loggers() -> None:
    assert "a debug line" in logged("debug") and "an info line" in logged("debug")
    info = logged("info")
    assert "a debug line" not in info and "an info line" in info and "WARNING jobs.worker: a warning line" in info
    assert logged("error") == ""


def test_addresses_and_targets_as_the_access_log_keeps_them() -> None:
    assert network_of("203.0.113.57:5000") == "203.0.113.0/24"
    assert network_of("[2001:db8:1:2::3]:443") == "2001:db8:1::/48"
    assert network_of("unix-socket") == "-"
    assert without_query("/posts/1?next=/x&q=words") == "/posts/1"
