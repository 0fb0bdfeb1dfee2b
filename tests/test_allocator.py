"""The allocator helpers: detecting the malloc in use, and starting processes on tcmalloc or glibc.

The tcmalloc tests need the shared library (Debian/Ubuntu: libgoogle-perftools4). Without it they are skipped with
that reason, except under CI=true, where the test command installs it and a missing library is a failure.
"""

import os
import subprocess
import sys

import pytest

from lale_hf.allocator import AllocatorNotFoundError, allocator_env, tcmalloc_library


PROBE = "from lale_hf.allocator import detect_allocator; print(detect_allocator())"


def malloc_of(env: dict) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def tcmalloc() -> str:
    """The tcmalloc library, or a skip that says what is missing (a failure under CI=true)."""
    try:
        return tcmalloc_library()
    except AllocatorNotFoundError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {error}")
        pytest.skip(f"needs libtcmalloc: {error}")


def test_allocator_env_strips_preloaded_allocators_for_glibc():
    env = allocator_env("glibc", {"LD_PRELOAD": "libfoo.so /usr/lib/libtcmalloc.so.4"})
    assert env["LD_PRELOAD"] == "libfoo.so"
    assert "LD_PRELOAD" not in allocator_env("glibc", {"LD_PRELOAD": "libtcmalloc_minimal.so.4"})
    with pytest.raises(ValueError, match="Unknown allocator 'jemalloc2'"):
        allocator_env("jemalloc2", {})
    assert malloc_of(allocator_env("glibc")) == "glibc"


def test_allocator_env_preloads_tcmalloc(tcmalloc):
    env = allocator_env("tcmalloc", {"LD_PRELOAD": "libjemalloc.so.2"})
    assert env["LD_PRELOAD"] == tcmalloc
    assert malloc_of({**os.environ, **env}) == "tcmalloc"


def test_missing_tcmalloc_is_a_typed_error_naming_the_package(monkeypatch):
    # A machine without the library, as the lookup sees it.
    monkeypatch.setattr("ctypes.util.find_library", lambda name: None)
    with pytest.raises(AllocatorNotFoundError, match="apt-get install libgoogle-perftools4"):
        tcmalloc_library()
    with pytest.raises(AllocatorNotFoundError, match="apt-get install libgoogle-perftools4"):
        allocator_env("tcmalloc", {})


def test_command_line_prints_the_library_to_preload(tcmalloc):
    run = subprocess.run([sys.executable, "-m", "lale_hf.allocator", "tcmalloc"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == tcmalloc
    assert malloc_of({**os.environ, "LD_PRELOAD": tcmalloc}) == "tcmalloc"


def test_command_line_reports_the_malloc_in_use_and_rejects_others():
    current = subprocess.run(
        [sys.executable, "-m", "lale_hf.allocator"], env=allocator_env("glibc"), capture_output=True, text=True
    )
    assert current.returncode == 0 and current.stdout.strip() == "glibc"
    wrong = subprocess.run([sys.executable, "-m", "lale_hf.allocator", "jemalloc"], capture_output=True, text=True)
    assert wrong.returncode == 2 and "usage" in wrong.stderr
