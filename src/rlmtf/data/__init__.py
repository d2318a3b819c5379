"""Logged exploration data (SPEC section 11): Parquet I/O with validation, and the request-level
transitions every RL algorithm trains on (SPEC section 5)."""

from rlmtf.data.io import LogDataError, LoggedData, LogWriter, concat_logs, read_logs, validate_logs
from rlmtf.data.transitions import RequestBatch, Transitions, build_transitions, group_requests

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
