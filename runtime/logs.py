"""Structured logging: one JSON object per line (or plain text), with the RPC's request id when known.

Every line goes through ``RedactUrls`` first: a URL's password and query values are masked, whoever logged it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from urllib.parse import urlsplit, urlunsplit

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

REDACTED = "***"
# A URL with something to hide: userinfo (``user:pass@``) or a query string (``?api_key=...``).
_SECRET_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*(?:@|\?)[^\s\"'<>]*")


def _extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The ``extra=`` fields of ``record``, values as JSON scalars (anything else as its repr)."""
    return {
        key: value if isinstance(value, str | int | float | bool | None) else repr(value)
        for key, value in record.__dict__.items()
        if key not in _STANDARD and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """Formats records as JSON with every ``extra=`` field kept as a key."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid:
            out["request_id"] = rid
        out.update(_extra_fields(record))
        if record.exc_info:
            out["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...``: the ``extra=`` fields and the request id follow the message
    (the lifecycle lines carry their facts there: the bound address, the start-up time)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _extra_fields(record)
        rid = request_id.get()
        if rid:
            fields = {"request_id": rid, **fields}
        if not fields:
            return line
        return line + " " + " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())


def _text_value(value: object) -> str:
    text = str(value)
    # Quoted where it would not read back as one value.
    return json.dumps(text, ensure_ascii=False) if not text or any(c.isspace() or c in "\"=" for c in text) else text


class RedactUrls(logging.Filter):
    """Masks the password and the query values of every URL in a record's message and string fields.

    Libraries log whole URLs: httpx logs every request at INFO ("HTTP Request: POST http://user:pass@host/mcp?
    api_key=..."), and an MCP server's or LLM endpoint's URL often carries its credential.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it, as it would without this filter
            return True
        if "://" in message:
            masked = _mask(message)
            if masked != message:
                record.msg, record.args = masked, ()
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str) and "://" in value:
                setattr(record, key, _mask(value))
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text: an exception's message may quote the URL it failed on.
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = _mask(text) if "://" in text else text
        return True


def _mask(text: str) -> str:
    return _SECRET_URL.sub(lambda m: redacted_url(m.group(0)), text)


def redacted_url(url: str) -> str:
    """``url`` with its password and the values of its query string replaced by ``***`` (the keys stay, so it is
    clear what is set); ``***`` for a URL that does not parse.

    The same masking as replies use (``runtime.convert.tool.redacted_url``; a test holds them equal). It is
    here, in a module that imports nothing of ours, because the filter runs in every process, and the
    conversion module takes seconds to import (protobuf, guards, tools).
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", f":{REDACTED}@", 1)
        pairs = (pair.partition("=") for pair in parts.query.split("&")) if parts.query else ()
        query = "&".join(f"{key}={REDACTED}" if sep else key for key, sep, _value in pairs)
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return REDACTED


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactUrls())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that log their own start-up at INFO (faiss: which CPU build it loaded, four lines; alembic: one
    # line per plugin): nothing an operator acts on, and a dozen lines ahead of "listening" on every start.
    # httpx (and the MCP client's vendored httpx2/httpcore2) log every request with its whole URL at INFO.
    for noisy in ("httpx", "httpcore", "httpx2", "httpcore2", "sentence_transformers", "alembic.runtime.migration",
                  "alembic.runtime.plugins", "faiss.loader"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
