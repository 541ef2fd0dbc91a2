"""Progress for long work: a rich progress bar on a terminal, plain periodic log lines otherwise.

Batch logs (SLURM, CI, ``dvc repro`` piped to a file) get one line at most every
``log_seconds`` seconds plus a final line, never carriage-return animations.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType

log = logging.getLogger("cdae")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is written, not when the
    handler was made: a process that runs the CLI several times (a test runner, a notebook)
    swaps and closes its stderr between runs."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; always sys.stderr
        pass


def setup_logging(verbose: bool = False) -> None:
    log.setLevel(logging.DEBUG if verbose else logging.INFO)
    if log.handlers:
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s cdae %(levelname)s %(message)s",
                                           datefmt="%H:%M:%S"))
    log.addHandler(handler)
    log.propagate = False


class Progress:
    """``with Progress(total, "train") as p: p.advance(n, loss=0.1)``."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", log_seconds: float = 30.0,
                 enabled: bool = True, start: int = 0) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.unit = unit
        self.log_seconds = log_seconds
        self.done = start
        self.enabled = enabled
        self._tty = enabled and sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._t0 = time.perf_counter()
        self._last = self._t0
        self._start = start

    def __enter__(self) -> "Progress":
        if self._tty:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress,
                                       TextColumn, TimeElapsedColumn, TimeRemainingColumn)

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeElapsedColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.desc, total=self.total, completed=self.done,
                                            info="")
        return self

    def advance(self, n: int = 1, **info: float) -> None:
        self.done += n
        text = " ".join(f"{k}={v:.4g}" for k, v in info.items())
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=text)
            return
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.log_seconds or self.done >= self.total):
            self._last = now
            rate = (self.done - self._start) / max(now - self._t0, 1e-9)
            log.info("%s %d/%d (%.0f%%) %.2f %s/s %s", self.desc, self.done, self.total,
                     100.0 * self.done / self.total, rate, self.unit, text)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.__exit__(et, ev, tb)
