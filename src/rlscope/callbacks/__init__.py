"""Trainer callbacks: the run-store writer, the token :class:`Observatory`, pass@k, and :func:`attach`."""

from rlscope.callbacks.attach import Attachment, attach
from rlscope.callbacks.observatory import Observatory
from rlscope.callbacks.passk import PassKCallback
from rlscope.callbacks.store import RunStoreCallback
from rlscope.callbacks.weights import WeightsCallback

__all__ = ["Attachment", "Observatory", "PassKCallback", "RunStoreCallback", "WeightsCallback", "attach"]
