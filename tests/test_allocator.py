"""The allocator helpers: detecting the malloc in use, and starting processes on tcmalloc or glibc."""

import os
import subprocess
import sys

import pytest

from lale_hf.allocator import allocator_env

PROBE = "from lale_hf.allocator import detect_allocator; print(detect_allocator())"


def malloc_of(env: dict) -> str:
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_allocator_env_preloads_or_strips_tcmalloc():
    env = allocator_env("glibc", {"LD_PRELOAD": "libfoo.so /usr/lib/libtcmalloc.so.4"})
    assert env["LD_PRELOAD"] == "libfoo.so"
    assert "LD_PRELOAD" not in allocator_env("glibc", {"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    with pytest.raises(ValueError, match="jemalloc2"):
        allocator_env("jemalloc2", {})
    env = allocator_env("tcmalloc", {"LD_PRELOAD": "libjemalloc.so.2"})
    assert "tcmalloc" in env["LD_PRELOAD"] and "jemalloc" not in env["LD_PRELOAD"]
    assert malloc_of({**os.environ, **env}) == "tcmalloc"
    assert malloc_of(allocator_env("glibc")) == "glibc"


def test_command_line_prints_the_library_to_preload():
    run = subprocess.run([sys.executable, "-m", "lale_hf.allocator", "tcmalloc"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    library = run.stdout.strip()
    assert "tcmalloc" in library
    assert malloc_of({**os.environ, "LD_PRELOAD": library}) == "tcmalloc"
    current = subprocess.run([sys.executable, "-m", "lale_hf.allocator"], env=allocator_env("glibc"), capture_output=True, text=True)
    assert current.stdout.strip() == "glibc"
    wrong = subprocess.run([sys.executable, "-m", "lale_hf.allocator", "jemalloc"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "usage" in wrong.stderr
