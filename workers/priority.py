"""The CPU priority a pool yields with (the Procfile's ``nice -n``), made to hold across
sessions.

On a kernel with autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``,
on by default in Debian's and Ubuntu's kernels) ``nice`` only orders the processes of
one session: the CPU is first shared out between sessions, each as one group. honcho
starts every Procfile entry in a session of its own (so do the bench and the tests), so
a broadcast pool at nice 10 took as much of a busy host as the transactional lane.

A worker started niced in a session of its own gives that session's autogroup its nice
value, and the pool yields as ``nice`` meant. "Its own": every process of the session is
the worker, a process it started, or the shell that leads the session and started it
(honcho's ``sh -c``). A worker sharing its session with anything else (a terminal, a
supervisor that does not separate its programs) leaves the group alone: that would slow
the rest of the session, the transactional lane perhaps among it.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import time
from pathlib import Path

log = logging.getLogger("notifier.workers")

AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")
# Without CAP_SYS_ADMIN the kernel takes one autogroup nice a tenth of a second, host-wide,
# and answers EAGAIN to the rest: pools starting together take turns.
RATE_LIMITED_FOR = 3.0


def autogroup_enabled() -> bool:
    try:
        return AUTOGROUP_ENABLED.read_text().strip() == "1"
    except OSError:  # a kernel built without it
        return False


def yield_across_sessions(autogroup: Path = Path("/proc/self/autogroup")) -> int | None:
    """Give this session's autogroup this process's nice value; return it when done."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice <= 0 or not autogroup_enabled() or not _own_session():
        return None
    return nice if group_nice(nice, autogroup) else None


def group_nice(nice: int, autogroup: Path = Path("/proc/self/autogroup")) -> bool:
    """Set this session's autogroup's nice, waiting out the kernel's rate limit; False
    (and a warning) when it kept its priority."""
    deadline = time.monotonic() + RATE_LIMITED_FOR
    while True:
        try:
            autogroup.write_text(str(nice))  # raising it needs no privilege
            return True
        except OSError as exc:
            if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                log.warning("nice %d: the session's autogroup kept its priority (%s)", nice, exc)
                return False
            time.sleep(0.1 + random.random() * 0.05)


def _own_session() -> bool:
    """Every process of this session is this one, a child of it, or the leader that
    started it (a shell without a terminal)."""
    me, parent, session = os.getpid(), os.getppid(), os.getsid(0)
    if session not in (me, parent):
        return False
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in (me, parent):
            continue
        try:  # the fields after the command's closing parenthesis: state, ppid, pgrp, session, tty_nr
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # a process that ended meanwhile
            continue
        if int(fields[3]) == session and int(fields[1]) != me:
            return False
    if session == parent:  # a leader with a terminal is a login shell: never ours alone
        try:
            terminal = int((Path("/proc") / str(parent) / "stat").read_text().rsplit(")", 1)[1].split()[4])
        except (OSError, IndexError, ValueError):
            return False
        return terminal == 0
    return True
