"""Progress of long work, shown on process 0: a tqdm bar on a terminal, plain log lines elsewhere.

A leaf (it imports no progan_jax module), so that any package, the data one included, can
report its progress without depending on the networks.

While a bar is shown, the log handlers that write to the terminal print around it: the bar is
cleared, the record printed on a line of its own, the bar redrawn (tqdm's `external_write_mode`,
what `tqdm.write` does). A record written straight to the stream would land on the bar's line,
after its text, and the bar's next redraw would overwrite the start of whatever line it is on.
"""

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

import jax
import tqdm

T = TypeVar("T")


def reports() -> bool:
    """Whether this process reports: only process 0, so that a run prints one copy."""
    return jax.process_index() == 0


def on_terminal() -> bool:
    """Whether stderr is a terminal that can show a bar: a tty of nonzero width. A pty whose
    size was never set reports 0 columns, where a bar would show nothing."""
    try:
        return sys.stderr.isatty() and os.get_terminal_size(sys.stderr.fileno()).columns > 0
    except (OSError, ValueError):  # no file descriptor, or a closed stream
        return False


def format_duration(seconds: float) -> str:
    """`1h02m`, `4m05s`, `12s`: a person's reading of a duration."""
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _writes_to_terminal(handler: logging.Handler) -> bool:
    """A stream handler on stdout or stderr, or absl's handler: it writes to stderr whatever
    its stream (--logtostderr, records over --stderrthreshold, logs before flags are parsed)."""
    if hasattr(handler, "python_handler"):  # absl.logging.ABSLHandler
        return True
    terminals = (sys.stdout, sys.stderr)
    return isinstance(handler, logging.StreamHandler) and handler.stream in terminals


class _AroundBars(logging.Handler):
    """`handler`, emitting with the bars on `terminal` cleared before and redrawn after."""

    def __init__(self, handler: logging.Handler, terminal: TextIO):
        super().__init__()
        self.handler = handler
        self.terminal = terminal

    def handle(self, record: logging.LogRecord) -> bool | logging.LogRecord:
        if record.levelno < self.handler.level:  # what the logger checks of a handler
            return False
        with tqdm.tqdm.external_write_mode(file=self.terminal):
            return self.handler.handle(record)


@contextlib.contextmanager
def _logging_around_bars(terminal: TextIO) -> Iterator[None]:
    """The root logger's terminal handlers print around the bars on `terminal` in this context.

    A bar opened inside another bar's context finds the handlers wrapped already; they clear
    and redraw every bar on `terminal`, its own included.
    """
    root = logging.getLogger()
    wrapped = {
        handler: _AroundBars(handler, terminal)
        for handler in root.handlers
        if _writes_to_terminal(handler)
    }
    root.handlers = [wrapped.get(handler, handler) for handler in root.handlers]
    try:
        yield
    finally:
        originals = {around: handler for handler, around in wrapped.items()}
        root.handlers = [originals.get(handler, handler) for handler in root.handlers]


@contextlib.contextmanager
def terminal_bar(iterable: Iterable[T] | None = None, **options: Any) -> Iterator[tqdm.tqdm]:
    """A tqdm bar (`options`: tqdm's) on stderr, the log printing around it until it closes."""
    terminal = sys.stderr
    with tqdm.tqdm(iterable, file=terminal, **options) as bar, _logging_around_bars(terminal):
        yield bar


def track(
    items: Iterable[T], total: int | None, description: str, done: int = 0, every_s: float = 30
) -> Iterator[T]:
    """`items`, reporting `description: N of total` while a long preparation consumes them (a
    bar on a terminal, else a log line every `every_s` seconds; process 0 only). `done` items
    were consumed before (a resumed build); `total` None: unknown. Closing this generator
    closes `items` (a reader's worker threads stop with it)."""
    iterator = iter(items)
    try:
        if not reports():
            yield from iterator
        elif on_terminal():
            with terminal_bar(
                iterator, total=total, initial=done, desc=description, leave=False
            ) as bar:
                yield from bar
        else:
            started = last = time.monotonic()
            of = "" if total is None else f" of {total}"
            for count, item in enumerate(iterator, done + 1):
                yield item
                now = time.monotonic()
                if now - last >= every_s:
                    last = now
                    elapsed = format_duration(now - started)
                    logging.info("%s: %d%s (%s)", description, count, of, elapsed)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
