"""Where decisions are recorded: logger "autooffload" (NullHandler only) and AUTOOFFLOAD_LOG."""

from __future__ import annotations

import json
import logging
import threading
import time
from logging import DEBUG, INFO

from . import _config

logger = logging.getLogger("autooffload")
_file_lock = threading.Lock()


def active() -> bool:
    """Whether a per-call record is wanted at all (cheap: this is on the hot path)."""
    return logger.isEnabledFor(DEBUG) or _config.environment().log_path is not None


def record(decision, *, first_in_bucket: bool) -> None:
    """DEBUG for every decision, INFO the first time a function meets a size bucket, JSON line to the file."""
    level = INFO if first_in_bucket else DEBUG
    if logger.isEnabledFor(level):
        logger.log(level, "%s", decision)
    path = _config.environment().log_path
    if path is not None:
        line = json.dumps({"time": time.time(), **decision.to_dict()}, default=str)
        with _file_lock:
            # One write of a whole line in append mode: lines from several processes do not interleave.
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
