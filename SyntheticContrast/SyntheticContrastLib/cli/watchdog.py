"""A child started by the Slicer module exits when Slicer does: a crashed or killed parent must not leave a
synthesis running, nor a copy of the patient's CT in the temporary folder."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

PARENT_ENV, JOB_DIR_ENV = "SYNTHETIC_CONTRAST_PARENT_PID", "SYNTHETIC_CONTRAST_JOB_DIR"


def parent_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. Asked of the pid itself, not of os.getppid(): PythonSlicer is a launcher,
    so this process's own parent is the launcher, not Slicer. Windows: the process handle is signalled once it has
    exited (os.kill there would terminate it)."""
    if os.name == "nt":
        import ctypes

        synchronize, wait_object_0 = 0x00100000, 0
        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(synchronize, False, pid)
        if not handle:
            return False
        try:
            return kernel32.WaitForSingleObject(handle, 0) != wait_object_0
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    try:  # Linux: a dead parent that nobody has reaped yet is a zombie, not alive
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def watch_parent_from_environment(exit_code: int, interval_s: float = 1.0) -> threading.Thread | None:
    """With PARENT_ENV set, a daemon thread that, once that parent is gone, deletes JOB_DIR_ENV's folder and ends
    this process at once: nothing a dead parent asked for is worth finishing, and nothing is written after it."""
    try:
        pid = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        return None
    job_dir = os.environ.get(JOB_DIR_ENV)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval_s):
            if not parent_alive(pid):
                if job_dir:
                    shutil.rmtree(Path(job_dir), ignore_errors=True)
                os._exit(exit_code)

    thread = threading.Thread(target=watch, name="parent-watchdog", daemon=True)
    thread.start()
    return thread
