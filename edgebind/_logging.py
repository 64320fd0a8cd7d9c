"""Library logging: a NullHandler on the ``edgebind`` logger; the CLI configures levels."""

from __future__ import annotations

import logging

logging.getLogger("edgebind").addHandler(logging.NullHandler())

_seen: set[tuple[str, str]] = set()


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)


def log_once(logger: logging.Logger, level: int, msg: str, *args: object) -> None:
    """Log a message only the first time this (logger, message) pair is seen in the process."""
    key = (logger.name, msg % args if args else msg)
    if key in _seen:
        return
    _seen.add(key)
    logger.log(level, msg, *args)
