"""A server that runs as a child process of ours — the embedded Weaviate server, a spawned vLLM server: launched with
its output in a log file, dying with the process that started it (the Linux parent-death signal), and waited for
until its readiness URL answers; a start that fails is reported with the log's last lines."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from more_lightning.progress import LINE_EVERY_S


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _own_group_and_die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()  # a process group of its own: the whole group (a server and the processes it starts) can be signalled
    _die_with_parent()


def launch(
    command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None, own_group: bool = False
) -> tuple[subprocess.Popen, IO[bytes]]:
    """Start ``command`` with stdout and stderr appended to ``log_path``; it gets SIGTERM when this process dies
    (also by SIGKILL or a crash). ``own_group``: in a new process group (``os.killpg(process.pid, …)`` reaches the
    processes it starts too). Returns the process and the open log file, which the caller closes after stopping it."""
    log_file = open(log_path, "ab")  # noqa: SIM115 - the server writes to it while it runs
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        preexec_fn=_own_group_and_die_with_parent if own_group else _die_with_parent,
    )
    return process, log_file


def log_tail(log_path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a server's log, for an error message."""
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_ready(
    process: subprocess.Popen,
    ready_url: str,
    timeout_s: float,
    describe: str,
    log_path: Path,
    error: type[Exception],
    poll_s: float = 0.5,
    timeout_hint: str = "",
    still_starting: Callable[[float], None] | None = None,
) -> None:
    """Poll ``ready_url`` until it answers 200. Raises ``error`` when the process exits first or ``timeout_s`` passes;
    the message names ``describe`` (what the server is), ``timeout_hint`` (the setting to raise) and the log's tail.
    ``still_starting(elapsed_s)`` is called every :data:`LINE_EVERY_S` seconds while it waits, so a start of a
    minute is not a silent minute."""
    began = time.monotonic()
    deadline = began + timeout_s
    reported = began
    while time.monotonic() < deadline:
        if still_starting is not None and time.monotonic() - reported >= LINE_EVERY_S:
            reported = time.monotonic()
            still_starting(reported - began)
        code = process.poll()
        if code is not None:
            raise error(
                f"{describe} exited with code {code} while starting. Last lines of {log_path}:\n{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(ready_url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(poll_s)
    raise error(
        f"{describe} was not ready after {timeout_s:.0f} s{timeout_hint} ({ready_url} did not answer). "
        f"Last lines of {log_path}:\n{log_tail(log_path)}"
    )
