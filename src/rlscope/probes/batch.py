"""The per-token view of one optimizer step that the token probes read: :class:`TokenBatch`.

Rows are completions, columns completion tokens (right-padded). ``mask`` marks valid tokens. ``comm``
(:mod:`rlscope.probes.reduce`) says which ranks' batches make up the step: live, each rank holds its own share and a
``per_rank`` probe combines the shares through it; a batch holding every rank's tokens (one process, the gather path,
offline recomputation from dumps joined with :func:`concat`, which pads the token axis) has a
:class:`~rlscope.probes.reduce.LocalComm`. Either way the probe computes the statistics of the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlscope.common import pad_and_concat
from rlscope.probes.reduce import Comm, LocalComm

# Per-row fields (shape (N,)) and per-token fields (shape (N, T)); everything else is metadata.
ROW_FIELDS = ("advantages", "rewards", "correct", "has_eos", "reflections", "repetition", "length")
TOKEN_FIELDS = ("logps", "entropies", "mask", "completion_ids")
DATA_FIELDS = TOKEN_FIELDS + ROW_FIELDS
# Per-row features computed from the decoded completion text (on the rank where the text is, before any gather):
# the token source decodes only when a due probe reads one of them.
TEXT_FIELDS = ("reflections", "repetition")
_PAD = {"logps": 0.0, "entropies": 0.0, "mask": False, "completion_ids": 0}


@dataclass
class TokenBatch:
    """Tensors of one step. ``advantages`` is the sequence advantage (N,) broadcast to tokens by the probes.

    ``correct``: completion counted as correct (reward of the chosen reward function >= threshold); ``has_eos``:
    the completion ended by itself (not clipped at max length); ``reflections`` / ``repetition``: per-completion
    behaviour features (see :mod:`rlscope.probes.behavior`), computed where the text is available.
    """

    logps: torch.Tensor | None = None
    entropies: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    completion_ids: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    has_eos: torch.Tensor | None = None
    reflections: torch.Tensor | None = None
    repetition: torch.Tensor | None = None
    length: torch.Tensor | None = None
    comm: Comm = field(default_factory=LocalComm, repr=False, compare=False)

    def __post_init__(self):
        if self.mask is not None:
            self.mask = self.mask.bool()
            if self.length is None:
                self.length = self.mask.sum(dim=1).to(torch.float64)
        if self.advantages is not None and self.advantages.dim() == 2:
            if self.advantages.shape[1] != 1:
                raise ValueError("token-level advantages (N, T) are not supported: the probes use sequence "
                                 f"advantages of shape (N,), got {tuple(self.advantages.shape)}")
            self.advantages = self.advantages[:, 0]

    @property
    def n_rows(self) -> int:
        for name in DATA_FIELDS:
            v = getattr(self, name)
            if v is not None:
                return v.shape[0]
        return 0

    def row_broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """A per-row tensor broadcast over the token axis of ``mask``."""
        return x.reshape(-1, 1).expand_as(self.mask)


def concat(batches: list[TokenBatch]) -> TokenBatch:
    """Join batches along the rows, right-padding the token axis (fields missing in any batch are dropped)."""
    batches = [b for b in batches if b is not None and b.n_rows > 0] or batches[:1]
    if not batches:
        return TokenBatch()
    out = {}
    for name in DATA_FIELDS:
        vals = [getattr(b, name) for b in batches]
        if any(v is None for v in vals):
            continue
        out[name] = pad_and_concat(vals, "right", _PAD[name]) if name in TOKEN_FIELDS else torch.cat(vals)
    return TokenBatch(**out)


def data_of(batch: TokenBatch) -> dict[str, torch.Tensor]:
    """The batch's tensors by field name (no ``comm``)."""
    return {name: getattr(batch, name) for name in DATA_FIELDS if getattr(batch, name) is not None}


def save_batch(batch: TokenBatch, directory, step: int, rank: int) -> None:
    """Save one rank's batch of one step as ``step<NNNNNN>-rank<R>.pt`` (CPU tensors)."""
    from pathlib import Path

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data = {name: t.detach().cpu() for name, t in data_of(batch).items()}
    tmp = d / f".step{step:06d}-rank{rank}.pt.tmp"
    torch.save(data, tmp)
    tmp.replace(d / f"step{step:06d}-rank{rank}.pt")


def load_batch(path) -> TokenBatch:
    return TokenBatch(**torch.load(path, weights_only=True))
