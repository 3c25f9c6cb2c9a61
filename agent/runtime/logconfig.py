"""Logging set-up: journald-friendly text or JSON lines on stderr, with secrets redacted.

Text under systemd (``$JOURNAL_STREAM`` names our stderr): no timestamp, since journald
adds its own, and a ``<N>`` syslog priority prefix so ``journalctl -p warning`` works.
Text on a terminal, once the config is known: the plant's local time with its zone's
abbreviation (people read it; a gateway's clock may be set to UTC). Text elsewhere (a file,
a pipe): an ISO 8601 timestamp with milliseconds and offset. The demo stamps text on a
terminal with its simulated plant clock instead (:func:`show_plant_time`), as its view does.
JSON: one object per line with
``ts``, ``level``, ``logger``, ``msg`` (and ``exc`` with a traceback).

Every configured secret (MQTT and OPC UA passwords) is replaced by ``***`` in the
message, its arguments, the traceback and any extra field before a record is written,
whoever logged it: a library echoing a connection string cannot leak it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, TextIO

from agent.config import Config, resolve_secret_file

__all__ = ["REDACTED", "RedactSecrets", "collect_secrets", "configure_logging", "show_plant_time"]

REDACTED = "***"

# Their own failure logs (with tracebacks, on every poll) repeat what the adapters report
# once per transition; with --debug everything of theirs shows.
_QUIET_LIBRARIES = ("asyncua", "pymodbus")

# Attributes every LogRecord has; anything else was passed in ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}

# syslog priorities for journald's SyslogLevelPrefix
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}


class RedactSecrets(logging.Filter):
    """Rewrites each record so that no configured secret value survives in it."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret containing another is replaced whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        # Render the message with its arguments, then redact the result: a secret may hide
        # inside any argument's repr (a dict, a URL, an exception).
        try:
            message = record.getMessage()
        except Exception:
            # A malformed call must neither raise here (filters run outside the handler's
            # error handling) nor leak its arguments through logging's error report.
            message = f"{record.msg} (arguments do not fit the format: {record.args!r})"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for name, value in list(vars(record).items()):
            if name not in _STANDARD_ATTRS and isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


class _TextFormatter(logging.Formatter):
    def __init__(self, redact: RedactSecrets, *, journald: bool, tz: tzinfo | None = None) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.redact = redact
        self.journald = journald
        self.tz = tz
        #: the plant's clock when it is not the machine's (the demo's simulated time)
        self.wall: Callable[[], datetime] | None = None

    def format(self, record: logging.LogRecord) -> str:
        text = self.redact.redact(super().format(record))
        if self.journald:
            # journald reads a priority prefix per line: a traceback's lines keep the
            # record's priority instead of falling back to the stream's default (info).
            prio = _PRIORITY.get(record.levelno, 6)
            return "\n".join(f"<{prio}>{line}" for line in text.splitlines())
        if self.tz is not None:
            when = self.wall() if self.wall is not None else datetime.fromtimestamp(record.created, UTC)
            return f"{_local(when, self.tz)} {text}"
        return f"{_iso(record.created)} {text}"


class _JsonFormatter(logging.Formatter):
    def __init__(self, redact: RedactSecrets) -> None:
        super().__init__()
        self.redact = redact

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            obj["exc"] = record.exc_text
        if record.stack_info:
            obj["stack"] = record.stack_info
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in obj:
                obj[name] = value
        # The filter has cleaned the strings; this pass covers secrets inside non-string
        # extra fields, which only become text here.
        return self.redact.redact(json.dumps(obj, ensure_ascii=False, default=str))


def _iso(created: float) -> str:
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


def _local(when: datetime, tz: tzinfo) -> str:
    """A time for people: the plant's local wall time with milliseconds and its zone."""
    t = when.astimezone(tz)
    return f"{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} {t:%Z}"


def _tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (ValueError, OSError):
        return False


def _journald_stderr(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM``)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        # No comparable descriptor (e.g. a captured stream): trust the variable.
        return True
    return (st.st_dev, st.st_ino) == (dev, ino)


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to ``sys.stderr`` as it is then, not as it was at start: the live
    terminal view (rich's ``Live``) stands in for it while it draws, so that a log line
    prints above the frame instead of through it (as ``logging.lastResort`` does)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure_logging(*, fmt: Literal["text", "json"] = "text", level: int = logging.INFO,
                      secrets: Iterable[str] = (), stream: TextIO | None = None,
                      tz: tzinfo | None = None) -> None:
    """Install plantfloor's handler on the root logger (replacing one installed before).

    ``stream`` defaults to ``sys.stderr``; ``tz``, the plant's time zone: text written to a
    terminal shows its local time with the zone. Calling again (e.g. once the config, and so the
    secrets, are known) replaces the previous handler rather than adding a second one.
    """
    out = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(out) if stream is not None else _CurrentStderr()
    handler.set_name("plantfloor")
    redact = RedactSecrets(secrets)
    handler.addFilter(redact)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter(redact))
    else:
        journald = _journald_stderr(out)
        handler.setFormatter(_TextFormatter(
            redact, journald=journald, tz=tz if tz is not None and not journald and _tty(out)
            else None))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "plantfloor"]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # the adapters log each failure once on its transition; the libraries would log it
    # again, with tracebacks, on every poll
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(level if level <= logging.DEBUG else logging.CRITICAL)


def show_plant_time(tz: tzinfo, wall: Callable[[], datetime]) -> None:
    """Text written to a terminal is stamped with ``wall`` (a simulated plant clock: the
    demo's) in the plant's zone, so that its log lines and its view tell one time. Text
    elsewhere (a pipe, a file, journald) and JSON keep the machine's time."""
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        stream = getattr(handler, "stream", None)
        if (handler.get_name() == "plantfloor" and isinstance(fmt, _TextFormatter)
                and not fmt.journald and stream is not None and _tty(stream)):
            fmt.tz, fmt.wall = tz, wall


def collect_secrets(cfg: Config) -> list[str]:
    """The secret values a config refers to (MQTT and OPC UA passwords), for redaction.

    Unreadable files are skipped: the component that needs the secret reports that error.
    """
    found: list[str] = []
    files = [cfg.mqtt.password_file]
    files += [getattr(s, "password_file", None) for s in cfg.sources]
    for path in files:
        if path is None:
            continue
        try:
            found.append(resolve_secret_file(path).read_text(encoding="utf-8").strip())
        except OSError:
            continue
    for var in ("PLANTFLOOR_MQTT_PASSWORD", "PLANTFLOOR_OPCUA_PASSWORD"):
        if os.environ.get(var):
            found.append(os.environ[var])
    return [s for s in found if s]
