"""Keyed sampling: an exact sample from softmax(logits / T) (top-p filtered) whose randomness is a function of
(seed, prompt index, sample index, position, token id) only -- not of the batch, the rank, the device or any RNG state.

Gumbel-max trick (Gumbel 1954; Maddison, Tarlow & Minka 2014, "A* Sampling"; Jang et al. 2017): if g_v are independent
standard Gumbel variables, ``argmax_v (l_v / T + g_v)`` is distributed as ``softmax(l / T)``; with top-p the filtered
logits are -inf and the argmax is a sample from the renormalised nucleus. The Gumbel variables come from a
counter-based hash instead of a random generator: ``u = (h + 1/2) / 2^32``, ``g = -log(-log u)``, where ``h`` is a
32-bit hash of the row's key (a 63-bit :func:`rlscope.common.derive_seed` of (seed, prompt, sample)), the position
(the number of tokens generated so far) and the token id, built from murmur3's ``fmix32`` finaliser. The arithmetic
is exact in int64 on any device (no reliance on integer overflow), so the same key gives the same noise on CPU and GPU
and in any batch. :class:`KeyedGumbelSampler` is a ``transformers`` ``LogitsProcessor``: generate with
``do_sample=False`` (greedy decoding takes the argmax) and the processor in ``logits_processor``.

What stays batch-dependent is the model's logits themselves: a left-padded batch may round differently from a
single prompt (float reductions over other shapes), which can flip an argmax at a near tie.
"""

from __future__ import annotations

import torch

from rlscope.common import derive_seed

_M32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in [0, 2^32), exactly: ``c`` split in 16-bit halves, no product >= 2^48."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def fmix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser (Appleby 2011), a bijection of [0, 2^32) with full avalanche, on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def row_keys(seed: int, prompts: list[int], samples: list[int]) -> torch.Tensor:
    """(rows, 2) int64: the two 32-bit words of ``derive_seed(seed, "gumbel", prompt, sample)`` per row."""
    keys = [derive_seed(seed, "gumbel", int(p), int(s)) for p, s in zip(prompts, samples)]
    return torch.tensor([[k & _M32, (k >> 32) & _M32] for k in keys], dtype=torch.int64)


def token_hash(vocab: int, device=None) -> torch.Tensor:
    """(vocab,) int64: ``fmix32(v * 0x9E3779B9 mod 2^32)`` per token id v (the per-token half of the key)."""
    return fmix32(torch.arange(vocab, dtype=torch.int64, device=device) * _GOLDEN32 & _M32)


def keyed_uniforms(keys: torch.Tensor, position: int, vocab: int | torch.Tensor) -> torch.Tensor:
    """(rows, vocab) float64 uniforms in (0, 1): a hash of (row key, ``position``, token id), exact on any device.
    ``vocab``: the vocabulary size, or its :func:`token_hash` (computed once)."""
    tokens = token_hash(vocab, keys.device) if isinstance(vocab, int) else vocab
    k1, k2 = keys[:, 0:1], keys[:, 1:2]
    r = fmix32(k1 ^ fmix32((k2 + position * _GOLDEN32) & _M32))  # (rows, 1): the row at this position
    h = fmix32(fmix32(r ^ tokens) ^ k2)
    return (h.to(torch.float64) + 0.5) * 2.0 ** -32


def gumbel_noise(keys: torch.Tensor, position: int, vocab: int | torch.Tensor) -> torch.Tensor:
    """(rows, vocab) float64 standard Gumbel variables ``-log(-log u)`` of :func:`keyed_uniforms`."""
    return -torch.log(-torch.log(keyed_uniforms(keys, position, vocab)))


def check_sampling(temperature: float, top_p: float) -> None:
    """A :class:`rlscope.errors.UsageError` naming the problem unless T > 0 and 0 < top_p <= 1."""
    from rlscope.errors import UsageError

    if not temperature > 0:
        raise UsageError(f"sampling: temperature must be > 0, got {temperature} (greedy decoding is not sampling)")
    if not 0 < top_p <= 1:
        raise UsageError(f"sampling: top_p must be in (0, 1], got {top_p}")


class KeyedGumbelSampler:
    """A ``LogitsProcessor``: temperature, top-p filtering (``transformers``' own ``TopPLogitsWarper``: the smallest
    set of tokens whose probability reaches ``top_p``), then keyed Gumbel noise; greedy decoding of the result is an
    exact sample from the filtered softmax(logits / T). Row i of the batch has key ``keys[i]`` (:func:`row_keys`);
    the position is the number of tokens generated so far (``input_ids`` width minus ``prompt_width``), so left
    padding does not shift it. Returns float64 scores."""

    def __init__(self, keys: torch.Tensor, prompt_width: int, temperature: float = 1.0, top_p: float = 1.0):
        check_sampling(temperature, top_p)
        self.keys, self.prompt_width, self.temperature = keys, int(prompt_width), float(temperature)
        self.top_p, self._tokens = None, None
        if top_p < 1:
            from transformers import TopPLogitsWarper

            self.top_p = TopPLogitsWarper(top_p)

    def filtered(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores / T``, top-p filtered (-inf outside the nucleus), in float64: the logits sampled from."""
        scores = scores.to(torch.float64) / self.temperature
        return scores if self.top_p is None else self.top_p(None, scores)

    def scores(self, logits: torch.Tensor, position: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The keyed scores of ``logits`` (one row per key, or per ``rows``: indices into the keys) at ``position``
        (tokens generated so far); their argmax is the sample."""
        keys = self.keys if rows is None else self.keys[rows.to(self.keys.device)]
        keys = keys.to(logits.device)
        if keys.shape[0] != logits.shape[0]:
            raise ValueError(f"KeyedGumbelSampler: {keys.shape[0]} row keys for a batch of {logits.shape[0]} rows")
        if self._tokens is None or self._tokens.shape[0] != logits.shape[1] or self._tokens.device != logits.device:
            self._tokens = token_hash(logits.shape[1], logits.device)
        return self.filtered(logits) + gumbel_noise(keys, position, self._tokens)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.scores(scores, input_ids.shape[1] - self.prompt_width)
