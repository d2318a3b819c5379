"""Online serving (SPEC section 12): the ranking service, its durable log and the log -> Parquet export."""

from rlmtf.serve.app import create_app, explore_assigned, policy_version
from rlmtf.serve.export import export_logs, stable_id
from rlmtf.serve.store import ServeStore

__all__ = ["ServeStore", "create_app", "explore_assigned", "export_logs", "policy_version", "stable_id"]
