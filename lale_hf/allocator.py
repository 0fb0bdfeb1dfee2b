"""Which malloc a process runs on, and how to start one on tcmalloc.

Eager PyTorch on the CPU allocates and frees large activation buffers at every op; glibc's malloc hands them back to
the kernel and page-faults them in again. Preloading tcmalloc made LALE and its transformers peers 1.09x to 2.6x
faster on a 2-core CPU, for inference and training alike, with no code change. To run any command on it:

    export LD_PRELOAD=$(python -m lale_hf.allocator tcmalloc)
"""

import ctypes.util
import os
import platform
import sys
from pathlib import Path


PRELOADABLE = ("tcmalloc", "jemalloc", "mimalloc")


class AllocatorNotFoundError(RuntimeError):
    """The shared library of an allocator is not installed."""


def detect_allocator() -> str:
    """The malloc this process runs on: a preloaded tcmalloc/jemalloc/mimalloc, else the C library's."""
    maps = Path("/proc/self/maps")
    loaded = maps.read_text() if maps.exists() else ""
    for name in PRELOADABLE:
        if f"lib{name}" in loaded:
            return name
    return platform.libc_ver()[0] or "system"


def tcmalloc_library() -> str:
    """The tcmalloc shared library to preload; `AllocatorNotFoundError` names the package to install when absent."""
    library = ctypes.util.find_library("tcmalloc") or ctypes.util.find_library("tcmalloc_minimal")
    if library is None:
        raise AllocatorNotFoundError(
            "tcmalloc not found (no libtcmalloc or libtcmalloc_minimal); on Debian/Ubuntu: "
            "apt-get install libgoogle-perftools4"
        )
    return library


def allocator_env(allocator: str, env: dict | None = None) -> dict:
    """A copy of `env` that makes a child process run on `allocator` ("tcmalloc" or "glibc")."""
    env = dict(os.environ if env is None else env)
    preload = [lib for lib in env.get("LD_PRELOAD", "").split() if not any(name in lib for name in PRELOADABLE)]
    if allocator == "tcmalloc":
        preload.insert(0, tcmalloc_library())
        # tcmalloc reports every allocation over 1 GB on stderr by default; logs do not need that.
        env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    elif allocator != "glibc":
        raise ValueError(f"Unknown allocator {allocator!r}; expected 'tcmalloc' or 'glibc'.")
    if preload:
        env["LD_PRELOAD"] = " ".join(preload)
    else:
        env.pop("LD_PRELOAD", None)
    return env


def main(argv: list[str] | None = None) -> int:
    """`python -m lale_hf.allocator tcmalloc` prints the library for LD_PRELOAD; alone, the malloc in use."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(detect_allocator())
        return 0
    if argv != ["tcmalloc"]:
        print("usage: python -m lale_hf.allocator [tcmalloc]", file=sys.stderr)
        return 2
    try:
        print(tcmalloc_library())
    except AllocatorNotFoundError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
