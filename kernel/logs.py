"""Structured logging: one JSON object per line, every record with an ``action``.

Any key that looks like a secret is redacted by a processor, so a careless ``log.info(...,
password=...)`` still never reaches the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import orjson
import structlog

from kernel.redaction import redact
from kernel.settings import get_settings


def _dumps(value: Any, **_: Any) -> str:
    # orjson: several times faster than json.dumps, and log lines are written for every job.
    return orjson.dumps(value, default=str).decode()


def _redact_processor(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    redacted: MutableMapping[str, Any] = redact(
        dict(event_dict), get_settings().extra_secret_fields
    )
    return redacted


def configure_logging(level: str | None = None, json: bool | None = None) -> None:
    settings = get_settings()
    level_name = (level or settings.log_level).upper()
    use_json = settings.log_json if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact_processor,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        # One write per line (the line and its newline together): pool processes share the
        # worker's stderr, and print()'s separate newline let their lines interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        # Two lines per job on the hot path: resolve the processor chain once.
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    # A producer that never configured logging still gets Drydock's JSON lines on stderr,
    # never structlog's development output on stdout.
    if not structlog.is_configured():
        configure_logging()
    return structlog.get_logger("drydock").bind(**bound)
