"""JupyterLab run as a child process on 127.0.0.1 (the demo's ``--serve``, browser tests).

Started in its own session (a Ctrl-C in the terminal reaches the parent only,
which then stops JupyterLab and, through it, its kernels), with a token, no
browser, and its runtime files and workspaces in ``workdir``.  Readiness is a
real ``GET /api/status`` polled against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from clarinet_nb.testing.peer import HOST, _die_with_parent, log_tail
from clarinet_nb.testing.ports import free_port

__all__ = ["JupyterLab"]

STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
#: Lab plugins that phone home or pop up questions; off in ``quiet`` mode.
QUIET_PLUGINS = (
    "@jupyterlab/apputils-extension:announcements",
    "@jupyterlab/extensionmanager-extension",
)


class JupyterLab:
    """``python -m jupyterlab`` serving ``root_dir`` on ``127.0.0.1:port`` with a token.

    ``env`` is the environment of the server and so of its kernels (e.g. the
    ``CLARINET_*`` variables of a PACS).  ``quiet=True`` also gives it a
    configuration folder of its own in ``workdir`` with the news announcements
    and the extension manager turned off (for browser tests); otherwise the
    user's Jupyter configuration applies.
    """

    def __init__(
        self,
        root_dir: Path,
        workdir: Path,
        *,
        port: int | None = None,
        token: str | None = None,
        env: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> None:
        self.root_dir = Path(root_dir)
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.token = token or secrets.token_hex(24)
        self._env = dict(os.environ if env is None else env)
        self._quiet = quiet
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "jupyterlab.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def url(self, path: str = "lab") -> str:
        """The address of ``path`` with the token, e.g. ``url("lab/tree/a.ipynb")``."""
        return f"http://{HOST}:{self.port}/{path.lstrip('/')}?token={self.token}"

    def _environment(self) -> dict[str, str]:
        env = dict(self._env)
        env.setdefault("JUPYTER_RUNTIME_DIR", str(self.workdir / "runtime"))
        env.setdefault("JUPYTERLAB_WORKSPACES_DIR", str(self.workdir / "workspaces"))
        if self._quiet:
            config = self.workdir / "config"
            (config / "labconfig").mkdir(parents=True, exist_ok=True)
            disabled = dict.fromkeys(QUIET_PLUGINS, True)
            (config / "labconfig" / "page_config.json").write_text(
                json.dumps({"disabledExtensions": disabled}), encoding="utf-8"
            )
            env["JUPYTER_CONFIG_DIR"] = str(config)
            env["JUPYTERLAB_SETTINGS_DIR"] = str(self.workdir / "settings")
        return env

    def start(self) -> None:
        """Launch JupyterLab and wait until its API answers."""
        if self.running:
            raise RuntimeError("JupyterLab is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            f"--ip={HOST}",
            f"--port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.terminals_enabled=False",
        ]  # fmt: skip
        if os.geteuid() == 0:  # containers and CI machines run as root
            command.append("--allow-root")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            command,
            cwd=self.root_dir,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl(2)
        )
        try:
            self._wait_ready(time.monotonic() + STARTUP_TIMEOUT)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
        request = urllib.request.Request(
            f"http://{HOST}:{self.port}/api/status",
            headers={"Authorization": f"token {self.token}"},
        )
        while True:
            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"JupyterLab exited with code {code} while starting\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(OSError), opener.open(request, timeout=2) as answer:
                if answer.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"JupyterLab did not answer on {HOST}:{self.port} within "
                    f"{STARTUP_TIMEOUT:.0f} s\n{log_tail(self.log_path)}"
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=0.2)

    def stop(self) -> None:
        """SIGTERM (JupyterLab then shuts its kernels down), SIGKILL after a timeout."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
