"""Where decisions are recorded: logger "autooffload" (NullHandler only) and AUTOOFFLOAD_LOG."""

from __future__ import annotations

import json
import logging
import threading
import time
from logging import DEBUG, INFO

from . import _config
from .errors import LogFileWarning, warn_at_user_line

logger = logging.getLogger("autooffload")
_file_lock = threading.Lock()
# The environment whose AUTOOFFLOAD_LOG could not be written: not tried again (nor warned about)
# until reload_environment() reads a new one.
_unwritable_in: _config.Environment | None = None


def active() -> bool:
    """Whether a per-call record is wanted at all (cheap: this is on the hot path)."""
    return logger.isEnabledFor(DEBUG) or _config.environment().log_path is not None


def record(decision, *, first_in_bucket: bool, observed_s: float | None = None, raised: bool = False,
           sampled_out_s: float | None = None) -> None:
    """DEBUG for every decision, INFO the first time a function meets a size bucket, JSON line to the file.

    A decision that is measured (``decision.observe``) is written to the file after its call,
    with ``observed_s`` beside ``predicted_s`` (and ``raised`` if the call raised): one line per call.
    ``sampled_out_s``: the line of a call such a decision did not learn from (it learns from one
    in ``observe_every``), with the seconds it was measured to take for the budget, written after
    it; the logger had it before the call.
    """
    global _unwritable_in
    untimed = sampled_out_s is not None
    if observed_s is None and not untimed:
        level = INFO if first_in_bucket else DEBUG
        if logger.isEnabledFor(level):
            logger.log(level, "%s", decision)
    env = _config.environment()
    path = env.log_path
    if path is None or env is _unwritable_in or (decision.observe and observed_s is None and not untimed):
        return
    fields = {"time": time.time(), **decision.to_dict()}
    if observed_s is not None:
        fields["observed_s"] = observed_s
        if raised:
            fields["raised"] = True
    elif untimed:
        fields["sampled_out_s"] = sampled_out_s
    line = json.dumps(fields, default=str)
    # Records are made before the function runs: a log that fails here must not stop the call.
    with _file_lock:
        if env is _unwritable_in:
            return
        try:
            # One write of a whole line in append mode: lines from several processes do not interleave.
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            return
        except OSError as e:
            _unwritable_in = env
            reason = e.strerror or str(e)
    warn_at_user_line(
        f"autooffload: AUTOOFFLOAD_LOG={path!r} cannot be written ({reason}); the calls go on, "
        "but their decisions are not logged to that file until it is fixed and reload_environment() is called",
        LogFileWarning,
    )
