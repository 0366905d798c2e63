"""Trainer callbacks: the run-store writer and the :class:`Observatory` (token probes, live)."""

from rlscope.callbacks.observatory import Observatory, attach
from rlscope.callbacks.store import RunStoreCallback

__all__ = ["Observatory", "RunStoreCallback", "attach"]
