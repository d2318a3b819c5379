"""Logged exploration data (``docs/design.md#logged-data``): Parquet I/O with validation, and the request-level
transitions every RL algorithm trains on (``docs/design.md#request-level-transitions``)."""

from rlmtf.data.io import LogDataError, LoggedData, concat_logs, read_logs, validate_logs
from rlmtf.data.transitions import RequestBatch, Transitions, build_transitions, group_requests
from rlmtf.data.writer import LogWriter

__all__ = [
    "LogDataError",
    "LogWriter",
    "LoggedData",
    "RequestBatch",
    "Transitions",
    "build_transitions",
    "concat_logs",
    "group_requests",
    "read_logs",
    "validate_logs",
]
