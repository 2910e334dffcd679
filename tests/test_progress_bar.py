"""Progress of long work: log lines, or on a terminal a bar that the log prints around."""

import contextlib
import fcntl
import io
import logging
import os
import pty
import re
import struct
import sys
import termios
from collections.abc import Iterator

import pytest
from absl import logging as absl_logging

from progan_jax.runtime import progress_bar

pytestmark = pytest.mark.usefixtures("isolated_logging")

RECORD = "critic_loss=1.5, generator_loss=-0.25"  # what clu's LoggingWriter logs every 50 steps
BAR_REDRAWN = r"\r[^\r\n]*\d+%\|"  # a line started over with a bar


class Terminal:
    """A pty's two sides: `stream` writes to it, `output` reads what was written."""

    def __init__(self, reader: int, stream: io.TextIOBase):
        self._reader = reader
        self.stream = stream

    def output(self) -> str:
        """All that was written (the pty turns `\\n` into `\\r\\n`). Closes the writing side: a
        read of the other side then ends, and nothing is left unread."""
        self.stream.close()
        chunks = []
        with contextlib.suppress(OSError):  # EIO: the writing side is closed, all was read
            while chunk := os.read(self._reader, 4096):
                chunks.append(chunk)
        return b"".join(chunks).decode()


@contextlib.contextmanager
def on_a_pty(columns: int) -> Iterator[Terminal]:
    """`sys.stderr` on a pty `columns` wide (0: a pty whose size was never set)."""
    reader, writer = pty.openpty()
    try:
        if columns:
            fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with open(writer, "w", buffering=1) as stream, contextlib.redirect_stderr(stream):
            yield Terminal(reader, stream)
    finally:
        os.close(reader)


@contextlib.contextmanager
def logging_to(handler: logging.Handler) -> Iterator[logging.Handler]:
    """`handler` on the root logger (absl's, or a stream handler as `basicConfig` adds)."""
    logging.getLogger().addHandler(handler)
    try:
        yield handler
    finally:
        logging.getLogger().removeHandler(handler)


def screen(output: str) -> list[str]:
    """The lines a person sees of `output`: `\\r` goes back to a line's start, and what is
    written there overwrites what was."""
    lines, line, column = [], [], 0
    for char in output:
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line).rstrip())
            line, column = [], 0
        else:
            line[column : column + 1] = [char]
            column += 1
    return [*lines, "".join(line).rstrip()]


def test_format_duration():
    assert [progress_bar.format_duration(s) for s in (4.4, 245, 3720, -1)] == [
        "4s",
        "4m05s",
        "1h02m",
        "0s",
    ]


def test_track_reports_a_long_preparation_and_closes_its_source(caplog):
    caplog.set_level(logging.INFO)
    closed = []

    def source():
        try:
            yield from range(10)
        finally:
            closed.append(True)

    tracked = progress_bar.track(source(), 12, "box-filtering", done=2, every_s=0)
    assert [next(tracked) for _ in range(3)] == [0, 1, 2]
    tracked.close()  # a SIGTERM or an error stops the consumer early
    assert closed == [True]
    assert "box-filtering: 3 of 12" in caplog.text and "box-filtering: 4 of 12" in caplog.text


def test_a_terminal_is_a_tty_with_columns(monkeypatch):
    with on_a_pty(80):
        assert progress_bar.on_terminal()
    with on_a_pty(0):
        assert not progress_bar.on_terminal()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not progress_bar.on_terminal()


@pytest.mark.parametrize("kind", ["stream", "absl"])
def test_a_record_logged_under_a_bar_prints_whole_and_the_bar_redraws(kind, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    with on_a_pty(100) as terminal:
        if kind == "absl":
            handler = absl_logging.get_absl_handler()
            # Where it writes once flags are parsed; before, it writes to sys.stderr: the pty too.
            monkeypatch.setattr(handler.python_handler, "stream", terminal.stream)
        else:
            handler = logging.StreamHandler(terminal.stream)
        with logging_to(handler):
            tracked = progress_bar.track(range(10), 10, "box-filtering")
            next(tracked)
            absl_logging.info(RECORD)
            line = handler.format(caplog.records[-1])
            assert list(tracked) == list(range(1, 10))
        output = terminal.output()
    assert line.endswith(RECORD)
    assert line in screen(output)  # on a line of its own, its first character intact
    assert re.match(BAR_REDRAWN, output.split(line + "\r\n")[1])


@pytest.mark.parametrize("ending", ["exhausted", "closed", "raising"])
def test_logging_writes_to_its_stream_again_once_the_bar_is_gone(ending, caplog):
    caplog.set_level(logging.INFO)

    def source():
        yield from range(3)
        if ending == "raising":
            raise OSError("unreadable")

    root = logging.getLogger()
    with on_a_pty(100) as terminal, logging_to(logging.StreamHandler(terminal.stream)):
        handlers = list(root.handlers)
        tracked = progress_bar.track(source(), 3, "box-filtering")
        next(tracked)
        if ending == "closed":
            tracked.close()
        elif ending == "raising":
            with pytest.raises(OSError):
                list(tracked)
        else:
            assert list(tracked) == [1, 2]
        assert root.handlers == handlers
        logging.info(RECORD)
        output = terminal.output()
    assert RECORD in screen(output)
