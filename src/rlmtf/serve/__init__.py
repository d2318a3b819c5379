"""Online serving (``docs/design.md#the-ranking-service``): the ranking service, its durable log
and the log -> Parquet export."""

from rlmtf.serve.app import create_app, explore_assigned, policy_version
from rlmtf.serve.bounds import UserBounds, load_user_bounds
from rlmtf.serve.export import export_logs, stable_id
from rlmtf.serve.store import ServeStore

__all__ = ["ServeStore", "UserBounds", "create_app", "explore_assigned", "export_logs", "load_user_bounds",
           "policy_version", "stable_id"]
