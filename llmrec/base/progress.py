"""Progress of long loops: a live bar on a terminal, plain periodic log lines everywhere else.

(The Lightning callbacks that report training progress the same way live in `llmrec.training.progress`.)

Every loop that can run for minutes (training steps, ranking a split, decoding) reports its rate and the time
left. On an interactive terminal that is tqdm's bar (Lightning's `TQDMProgressBar` during training); when
stderr is not a terminal (a log file, CI, `nohup`) a bar would print control characters, so one plain line is
logged every `every` seconds instead.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("llmrec.progress")
T = TypeVar("T")
DEFAULT_EVERY = 30.0


def interactive() -> bool:
    """Whether stderr is a terminal (where a live bar makes sense)."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """`75` -> `1m15s`; `4000` -> `1h06m`."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def progress_line(what: str, done: float, total: float | None, elapsed: float, unit: str) -> str:
    """`ranking test: 120/1,160 users (10%), 12.3 users/s, 1m25s left`."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if total:
        eta = duration((total - done) / rate) if rate > 0 else "?"
        return f"{what}: {done:,.0f}/{total:,.0f} {unit} ({100 * done / total:.0f}%), {rate:.1f} {unit}/s, {eta} left"
    return f"{what}: {done:,.0f} {unit}, {rate:.1f} {unit}/s"


def track(items: Iterable[T], what: str, total: float | None = None, unit: str = "it",
          size=lambda item: 1, every: float = DEFAULT_EVERY, bar: bool | None = None) -> Iterator[T]:
    """Yield `items`, reporting progress (`size(item)` units per item, e.g. the samples of a batch)."""
    bar = interactive() if bar is None else bar
    if bar:
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=what, unit=f" {unit}", dynamic_ncols=True, leave=False) as pbar:
            for item in items:
                yield item
                pbar.update(size(item))
        return
    started = last = time.perf_counter()
    done = 0.0
    for item in items:
        yield item
        done += size(item)
        now = time.perf_counter()
        if now - last >= every:
            last = now
            log.info(progress_line(what, done, total, now - started, unit))
    if done:
        log.info(progress_line(what, done, total, time.perf_counter() - started, unit) + " (done)")
