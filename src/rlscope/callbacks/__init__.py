"""The probe engine and its wiring: :class:`Observatory` (cadence, step axis, publishing), the probe sources
(:mod:`rlscope.callbacks.sources`), and :func:`attach`, the one way rlscope is added to a trainer."""

from rlscope.callbacks.attach import attach
from rlscope.callbacks.engine import Observatory

__all__ = ["Observatory", "attach"]
