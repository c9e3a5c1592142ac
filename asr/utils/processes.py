"""Worker processes that leave signals to their parent and end with it.

A forked child keeps its parent's Python signal handlers: the decoding pool's children, forked
from ``asr serve``, kept uvicorn's SIGTERM handler, so ``Pool.terminate()`` could not stop them
and the server waited for them for ever (issue 33). A worker calls :func:`become_worker` first.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>: the signal a process gets when its parent ends
PARENT_CHECK_SECONDS = 1.0  # elsewhere: how often a watcher thread looks for the parent


def become_worker(parent: int | None = None) -> None:
    """SIGTERM does what it says (an inherited handler may not), Ctrl-C is left to the parent
    (it reaches the terminal's whole process group; the parent decides what stops), and the
    process is killed when its parent ends, however it ends (also by SIGKILL); ``parent``: see
    :func:`die_with_parent`."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent)


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent process ends. ``parent``: the pid the caller
    started this process from, if known (one that ended before this call is then noticed too).

    Linux: ``prctl(PR_SET_PDEATHSIG)``, no thread (a worker that forks stays single-threaded).
    The kernel sends it when the parent *thread* that started this process ends, so start
    workers from a thread that lives as long as they should. Elsewhere a daemon thread polls.
    """
    parent = os.getppid() if parent is None else parent
    if os.getppid() != parent:
        os._exit(1)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent:  # the parent ended before the request took effect
                os._exit(1)
            return
    threading.Thread(target=_watch_parent, args=(parent,), name="asr-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)
