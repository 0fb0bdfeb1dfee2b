"""Worker processes of the converter and of the sample generator: how they start, and how they die with their
parent (a killed converter must not leave workers converting for nobody)."""

import ctypes
import multiprocessing
import os
import signal
import sys


_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def process_context():
    """fork where available (workers start without re-importing lale_hf); elsewhere spawn, the only safe choice."""
    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")


def die_with_parent(parent_pid: int):
    """Run first in a worker: on Linux the kernel then kills it (SIGKILL) as soon as `parent_pid` dies; if the parent
    is already gone, the worker exits now. Elsewhere, workers also poll `parent_alive`."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl (e.g. a libc without it): the liveness polls still stop the worker
    if not parent_alive(parent_pid):
        os._exit(1)


def parent_alive(parent_pid: int) -> bool:
    """Whether this process's parent is still `parent_pid` (an orphan is re-parented to init or a subreaper)."""
    return os.getppid() == parent_pid
