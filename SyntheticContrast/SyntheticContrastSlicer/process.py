"""Runs the engine's own CLI as a child process, as SlicerTotalSegmentator does, and follows it from a QTimer.

The child's JSON lines go to a log file that each timer tick reads, so Slicer's event loop is never blocked, and
Cancel kills the whole process tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import qt

#: How often the panel looks at the child's log, in milliseconds.
POLL_INTERVAL_MS = 200
#: Windows' flag, named here (subprocess defines it only on Windows) so that the Windows branch is testable anywhere.
CREATE_NEW_PROCESS_GROUP = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200)


def popen_options(system: str = os.name) -> dict:
    """The child gets a process group of its own, so that Cancel reaches everything it starts."""
    return {"creationflags": CREATE_NEW_PROCESS_GROUP} if system == "nt" else {"start_new_session": True}


def tree_kill_command(pid: int, system: str = os.name) -> list[str] | None:
    """Windows has no process groups to signal: taskkill /T ends the child and its own children. None on POSIX."""
    return ["taskkill", "/F", "/T", "/PID", str(pid)] if system == "nt" else None


def python_slicer() -> str:
    """Slicer's own Python executable (PythonSlicer), so the child sees exactly the packages Slicer has."""
    found = shutil.which("PythonSlicer")
    if found:
        return found
    import slicer

    home = getattr(slicer.app, "slicerHome", "") or ""
    for name in ("PythonSlicer.exe", "PythonSlicer"):
        candidate = Path(home) / "bin" / name
        if home and candidate.is_file():
            return str(candidate)
    return sys.executable  # headless tests and plain Python: the interpreter running us


@dataclass
class ProcessResult:
    """How a child ended: 'done', 'failed' or 'cancelled', with its last JSON events and the full log's path."""

    state: str
    returncode: int | None
    message: str
    log_path: Path
    events: list[dict] = field(default_factory=list)

    @property
    def done_event(self) -> dict:
        return next((e for e in reversed(self.events) if e.get("event") == "done"), {})


class ProcessRunner:
    """One child process at a time; ``start`` refuses a second run while the first is alive."""

    def __init__(self, interval_ms: int = POLL_INTERVAL_MS):
        self.timer = qt.QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.poll)
        self._popen = None
        self._log = None
        self._log_path = None
        self._offset = 0
        self._events: list[dict] = []
        self._on_event = None
        self._on_finished = None

    @property
    def running(self) -> bool:
        return self._popen is not None

    def start(self, command: list[str], log_path: Path, on_event, on_finished, env: dict | None = None) -> None:
        """Start ``command``; ``on_event(dict)`` gets each JSON line, ``on_finished(ProcessResult)`` the end."""
        if self.running:
            raise RuntimeError("A synthesis is already running; wait for it or cancel it first.")
        self._log_path = Path(log_path)
        self._log = open(self._log_path, "wb")  # noqa: SIM115 - kept open for the child's lifetime
        self._offset, self._events = 0, []
        self._on_event, self._on_finished = on_event, on_finished
        self._popen = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env={**os.environ, **(env or {})}, **popen_options())
        self.timer.start()

    def _read_new_lines(self) -> None:
        with open(self._log_path, "rb") as fh:
            fh.seek(self._offset)
            chunk = fh.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read on the next tick
        self._offset += len(complete)
        for raw in complete.decode("utf-8", "replace").splitlines():
            if raw.startswith("{"):
                try:
                    event = json.loads(raw)
                except json.JSONDecodeError:
                    continue
                self._events.append(event)
                if self._on_event:
                    self._on_event(event)

    def poll(self) -> ProcessResult | None:
        """One timer tick: pass on new events; when the child has ended, report how, once."""
        if not self.running:
            return None
        self._read_new_lines()
        code = self._popen.poll()
        if code is None:
            return None
        self._read_new_lines()
        state = "done" if code == 0 else "cancelled" if any(e.get("event") == "cancelled" for e in self._events) else "failed"
        return self._finish(state, code, self._failure_message(code) if state == "failed" else state.capitalize())

    def _failure_message(self, code: int) -> str:
        errors = [e["message"] for e in self._events if e.get("event") == "error" and e.get("message")]
        if errors:
            return errors[-1]
        tail = self._log_path.read_text("utf-8", "replace").strip().splitlines()[-1:] if self._log_path.exists() else []
        return f"the synthesis process ended with exit code {code}" + (f": {tail[0]}" if tail else "")

    def cancel(self, timeout_s: float = 2.0) -> ProcessResult | None:
        """Kill the child and everything it started; returns once it is gone (or ``timeout_s`` has passed)."""
        if not self.running:
            return None
        _kill_tree(self._popen)
        deadline = time.monotonic() + timeout_s
        while self._popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self._finish("cancelled", self._popen.poll(), "Cancelled")

    def _finish(self, state: str, code, message: str) -> ProcessResult:
        self.timer.stop()
        self._log.close()
        result = ProcessResult(state, code, message, self._log_path, list(self._events))
        self._popen = None
        callback, self._on_finished, self._on_event = self._on_finished, None, None
        if callback:
            callback(result)
        return result


def _kill_tree(popen) -> None:
    """The child runs in its own process group (session), so one signal reaches its workers too."""
    command = tree_kill_command(popen.pid)
    if command:
        subprocess.run(command, capture_output=True, check=False)
        return
    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
