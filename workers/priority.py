"""The CPU priority a pool yields with (the Procfile's ``nice -n``), made to hold across
sessions.

On a kernel with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``,
on by default in Debian's and Ubuntu's kernels) ``nice`` only orders the processes of
one session: the CPU is first shared out between sessions, each as one group. honcho
starts every Procfile entry in a session of its own (so do the bench and the tests), so
a broadcast pool at nice 10 took as much of a busy host as the transactional lane.

A worker started niced in a session of its own (it leads it, or honcho's ``sh -c``
leads it with no terminal) gives that session's autogroup its nice value, and the pool
yields as ``nice`` meant. A worker sharing its session (started by hand from a terminal)
leaves the group alone: that would slow everything else started there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("notifier.workers")

AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")


def yield_across_sessions(autogroup: Path = Path("/proc/self/autogroup")) -> int | None:
    """Give this session's autogroup this process's nice value; return it when done."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0 or not _own_session():
        return None
    try:
        if AUTOGROUP_ENABLED.read_text().strip() != "1":
            return None
        autogroup.write_text(str(nice))  # raising it needs no privilege
    except OSError as exc:
        log.warning("nice %d: the session's autogroup kept its priority (%s)", nice, exc)
        return None
    return nice


def _own_session() -> bool:
    session = os.getsid(0)
    if session == os.getpid():
        return True
    try:  # the fields after the command's closing parenthesis: state, ppid, pgrp, session, tty_nr
        terminal = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[4])
    except (OSError, IndexError, ValueError):
        return False
    return session == os.getppid() and terminal == 0
