"""Progress for people: tqdm's bar on a terminal, and for a log file (a cluster job, a batch log, the node's or the
Slicer child's stderr) one plain line per 10 % with done, total, rate and ETA, never a carriage return."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


class PlainProgress:
    """The same calls as the tqdm bar this module hands out (update, update_to, set_postfix_str, write, close), written
    as whole lines: one each time another tenth of the total is done, and every ``quiet_seconds`` while the total is
    unknown."""

    def __init__(self, total: int | None = None, unit: str = "it", desc: str = "", stream=None, quiet_seconds: float = 30.0,
                 clock=time.monotonic):
        self.total, self.unit, self.desc, self.n = total, unit, desc, 0
        self._stream = stream if stream is not None else sys.stderr
        self._clock, self._quiet = clock, quiet_seconds
        self._start = self._last_line = clock()
        self._tenth, self._postfix = 0, ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.update_to(self.n + n, self.total)

    def update_to(self, done: int, total: int | None = None) -> None:
        self.n, self.total = done, total if total is not None else self.total
        now = self._clock()
        if self.total:
            tenth = min(10, int(10 * done / self.total))
            if tenth > self._tenth:
                self._tenth = tenth
                self._line(now)
        elif now - self._last_line >= self._quiet:
            self._line(now)

    def set_postfix_str(self, text: str) -> None:
        self._postfix = text

    def write(self, message: str) -> None:
        print(message, file=self._stream, flush=True)

    def _line(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-9)
        rate = self.n / elapsed
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            text = (f"{self.desc}: {self.n}/{self.total} {self.unit}s ({100 * self.n / self.total:.0f}%), "
                    f"{rate:.2f} {self.unit}s/s, elapsed {_duration(elapsed)}, ETA {_duration(eta) if eta == eta else '?'}")
        else:
            text = f"{self.desc}: {self.n} {self.unit}s, {rate:.2f} {self.unit}s/s, elapsed {_duration(elapsed)}"
        self.write(text + (f" [{self._postfix}]" if self._postfix else ""))
        self._last_line = now

    def close(self) -> None:
        """Nothing to flush: every line was written whole."""


def progress_bar(total: int | None = None, unit: str = "it", desc: str = "", disable: bool = False, position: int | None = None,
                 stream=None):
    """tqdm's bar where stderr is a terminal, PlainProgress where it is a file or a pipe; with ``disable``, a
    PlainProgress that writes only what ``write`` is given."""
    stream = stream if stream is not None else sys.stderr
    if disable:
        return _Silent(total, unit, desc, stream)
    if not getattr(stream, "isatty", lambda: False)():
        return PlainProgress(total, unit, desc, stream)
    from tqdm import tqdm

    class Bar(tqdm):
        def update_to(self, done: int, total: int | None = None) -> None:
            if total is not None:
                self.total = total
            self.n = done
            self.refresh()

    return Bar(total=total, unit=unit, desc=desc, position=position, file=stream)


class _Silent(PlainProgress):
    def _line(self, now: float) -> None:
        self._last_line = now
