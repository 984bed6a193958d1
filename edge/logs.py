"""structlog set-up: JSON when stdout is not a terminal, and stdlib logs routed through it.

pymodbus, asyncua, amqtt and aiomqtt log through the standard library; their records
go through structlog's ProcessorFormatter so every line has the same shape. Every line,
ours or a library's, passes `edge.redact.redact_event` last (after the traceback is
formatted), so no URL password or configured secret reaches a log.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

from edge.redact import redact_event

_NOISY = {"pymodbus": logging.WARNING, "asyncua": logging.WARNING, "amqtt": logging.WARNING,
          "transitions": logging.WARNING, "aiomqtt": logging.WARNING, "alembic": logging.WARNING}  # fmt: skip


def configure(
    level: str = "info",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
) -> None:
    """Configure structlog and the stdlib root logger once for the process."""
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, lvl in _NOISY.items():
        logging.getLogger(name).setLevel(max(lvl, logging.getLevelName(level.upper())))
