"""Guards: operator policy rules plus a self-evolving hierarchical guard memory.

Entry point: ``GuardEngine.check(scope, GuardRequest) -> GuardVerdict`` (see ``guards/engine.py``).
"""

from guards.engine import GuardEngine
from guards.model import Decision, GuardRequest, GuardVerdict, Stage, ToolCallInfo

__all__ = ["Decision", "GuardEngine", "GuardRequest", "GuardVerdict", "Stage", "ToolCallInfo"]
