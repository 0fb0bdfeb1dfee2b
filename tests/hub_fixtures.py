"""pytest plugin: one Hub server (tests/hub_server.py) on 127.0.0.1 for the whole test session.

Enable with ``pytest_plugins = ["hub_fixtures"]`` in tests/conftest.py. Clients talk to it from subprocesses
whose environment comes from ``hub_server.env()``: this test process runs with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


SERVER_SCRIPT = Path(__file__).with_name("hub_server.py")
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class HubServer:
    """A running server: its base URL, the folder of its git repositories, its log file and process id."""

    endpoint: str
    repos: Path
    log_path: Path
    homes: Path
    pid: int

    def repo_path(self, repo_id: str, repo_type: str = "model") -> Path:
        """The git repository behind a Hub repository (no checkout; LFS content under .git/lfs/objects)."""
        return self.repos / f"{repo_type}s" / repo_id

    def env(self, extra: dict[str, str | None] | None = None) -> dict[str, str]:
        """Environment for a client subprocess: this server as the Hub, a token, a fresh HF_HOME.

        Inherited HF_* settings (offline mode, cache paths) are dropped; `extra` is applied last, where a None
        value removes the variable (e.g. ``{"PYTHONPATH": None}``).
        """
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HF_", "HUGGINGFACE_")) and key != "TRANSFORMERS_CACHE"
        }
        no_proxy = ",".join(filter(None, [env.get("NO_PROXY") or env.get("no_proxy"), "127.0.0.1", "localhost"]))
        env.update({
            "HF_ENDPOINT": self.endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": "hf_test_token",
            "HF_HOME": tempfile.mkdtemp(prefix="hf-home-", dir=self.homes),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            # A CI proxy must never see requests meant for the loopback server.
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        })  # fmt: skip
        for key, value in (extra or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def log_tail(self, lines: int = 40) -> str:
        """The end of the server log, for failure messages."""
        return _tail(self.log_path, lines)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _status(url: str) -> int:
    # Explicitly without proxies: the server is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"Authorization": "Bearer health-check"})
    try:
        with opener.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _wait_until_ready(process: subprocess.Popen, port_file: Path, log_path: Path) -> str:
    """The server's base URL once it answers; raises with the log if it dies or hangs."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"Hub server exited with {process.returncode}:\n{_tail(log_path)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"Hub server not ready after {START_TIMEOUT_S} s:\n{_tail(log_path)}")
        if port_file.exists():
            endpoint = f"http://127.0.0.1:{port_file.read_text()}"
            try:
                if _status(f"{endpoint}/api/whoami-v2") == 200:
                    return endpoint
            except OSError:
                pass  # bound but not listening yet
        time.sleep(0.1)


@contextlib.contextmanager
def running_hub_server(root: Path) -> Iterator[HubServer]:
    """Run a Hub server with its state under `root`; it is stopped on exit, also after errors."""
    root.mkdir(parents=True, exist_ok=True)
    port_file, log_path, homes = root / "port", root / "server.log", root / "homes"
    homes.mkdir(exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, str(SERVER_SCRIPT), "--root", str(root), "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        endpoint = _wait_until_ready(process, port_file, log_path)
        yield HubServer(endpoint=endpoint, repos=root / "repos", log_path=log_path, homes=homes, pid=process.pid)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory) -> Iterator[HubServer]:
    """The session's Hub server on a free loopback port (see HubServer for the API)."""
    with running_hub_server(tmp_path_factory.mktemp("hub-server")) as server:
        yield server
