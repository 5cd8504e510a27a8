"""Progress of long work, readable where it lands: a live bar on a terminal (tqdm, its clock kept running
while a slow unit computes), and plain lines in a log (stderr not a terminal: `make eval > log`, a pod
driven through `gcloud ... --command`) — the first unit done, then a line at least every `every` seconds
even while one unit takes longer (a compile, a 16k forward, a logit check), and the last — each with the
count, elapsed time, ETA and the latest figures (loss, tokens/s, the cell being computed).

    YARN_JAX_PROGRESS=bar|lines|off   force the form (default: bar on a terminal, lines otherwise)
    YARN_JAX_PROGRESS_EVERY=SECONDS   the interval of plain lines (default 30)
"""

from __future__ import annotations

import os
import sys
import threading
import time

MODES = ("bar", "lines", "off")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts units of work toward `total` (`initial` already done, e.g. resumed steps). `update(n, **info)`
    adds n units and sets the figures shown beside the count; `describe(text)` names what is being done."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", initial: int = 0, enabled: bool = True,
                 stream=None, every: float | None = None, mode: str | None = None):
        self.total, self.desc, self.unit, self.done = total, desc, unit, initial
        self.stream = stream or sys.stderr
        mode = mode or os.environ.get("YARN_JAX_PROGRESS") or ("bar" if _is_terminal(self.stream) else "lines")
        if mode not in MODES:
            raise ValueError(f"YARN_JAX_PROGRESS={mode!r}: choose from {list(MODES)}")
        self.mode = mode if enabled else "off"
        self.every = float(os.environ.get("YARN_JAX_PROGRESS_EVERY", 30) if every is None else every)
        self.info: dict = {}
        self._start, self._initial, self._last_line, self._shown = time.monotonic(), initial, None, None
        self._bar = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._clock = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             dynamic_ncols=True)
        if self.mode != "off":  # the heartbeat: a slow unit never leaves the report silent
            self._clock = threading.Thread(target=self._heartbeat, name=f"progress:{desc}", daemon=True)
            self._clock.start()

    def _heartbeat(self) -> None:
        """Every second on a terminal (the bar's elapsed time moves), else a line when none was printed for
        `every` seconds."""
        tick = 1.0 if self.mode == "bar" else max(min(self.every, 5.0), 0.05)
        while not self._stop.wait(tick):
            with self._lock:
                if self._bar is not None:
                    self._bar.refresh()
                elif self.mode == "lines":
                    now = time.monotonic()
                    if now - (self._last_line if self._last_line is not None else self._start) >= self.every:
                        self._line(now)

    def describe(self, desc: str) -> None:
        with self._lock:
            self.desc = desc
            if self._bar is not None:
                self._bar.set_description_str(desc)

    def update(self, n: int = 1, **info) -> None:
        with self._lock:
            self.done += n
            self.info.update(info)
            if self._bar is not None:
                if info:
                    self._bar.set_postfix(self.info, refresh=False)
                self._bar.update(n)
            elif self.mode == "lines":
                now = time.monotonic()
                if self._last_line is None or now - self._last_line >= self.every or self.done >= self.total:
                    self._line(now)

    def line(self) -> str:
        """The plain report: `desc: done/total unit (pct), elapsed, ETA, figures`."""
        elapsed = time.monotonic() - self._start
        ran = self.done - self._initial
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}"
                 + (f" ({100 * self.done / self.total:.0f}%)" if self.total else ""), f"{_duration(elapsed)} elapsed"]
        if 0 < ran and self.done < self.total:
            parts.append(f"ETA {_duration(elapsed / ran * (self.total - self.done))}")
        parts += [f"{k}={v}" for k, v in self.info.items()]
        return ", ".join(parts)

    def _line(self, now: float) -> None:
        """Print the report, unless it would repeat the last one printed word for word but the clock (a
        zero-unit update at the end of a cell reports nothing new)."""
        shown = (self.done, self.desc, tuple(self.info.items()))
        if shown == self._shown and self.done >= self.total:
            return
        self._last_line, self._shown = now, shown
        print(self.line(), file=self.stream, flush=True)

    def _stop_heartbeat(self) -> None:
        self._stop.set()
        if self._clock is not None and self._clock is not threading.current_thread():
            self._clock.join()
            self._clock = None

    def close(self, *, finished: bool = False) -> None:
        """End the report (the bar's line ends, so what is printed next starts on its own; in plain lines the
        last state, if not yet reported). `finished`: count the remaining units done first — in plain lines
        only when the report said anything yet (a short step adds nothing to a log)."""
        self._stop_heartbeat()
        if finished and (self._bar is not None or self._last_line is not None):
            self.update(self.total - self.done)
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            elif self.mode == "lines" and self._last_line is not None and self.done < self.total:
                self._line(time.monotonic())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class working:
    """One long step with no units to count (a logit check, a compile): `with working("logit check"):` shows
    its clock — a bar on a terminal, a line every `every` seconds in a log, and there a last line when it
    ends if it reported at all (a step shorter than the interval adds nothing to a log)."""

    def __init__(self, desc: str, *, enabled: bool = True, stream=None, every: float | None = None):
        self.progress = Progress(1, desc, unit="step", enabled=enabled, stream=stream, every=every)

    def __enter__(self) -> Progress:
        return self.progress

    def __exit__(self, exc_type, *exc):
        self.progress.close(finished=exc_type is None)


def console(*, quiet: bool = False, stream=None):
    """The rich console a command reports on (stderr): the terminal's width on a terminal; in a log no
    wrapping at all (one message, one line: grep finds it) and tables at their natural width."""
    from rich.console import Console

    stream = stream or sys.stderr
    if _is_terminal(stream):
        return Console(file=stream, quiet=quiet)
    return Console(file=stream, quiet=quiet, soft_wrap=True, width=200)
