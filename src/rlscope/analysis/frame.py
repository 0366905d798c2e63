"""One step-indexed frame of a run, whatever wrote it: :class:`RunFrame`.

Readers (:mod:`rlscope.analysis.readers`) fill it from a log; analyses (:mod:`rlscope.analysis.analyses`) read it.
Metric series keep the source's own names (``raw``); :meth:`RunFrame.series` also answers canonical names (``entropy``,
``response_length``, ``reward``, ...) through the alias table (:mod:`rlscope.analysis.aliases`). Steps that belong to
SFT (a warm-start phase, or SFT steps an interleaving schedule took) are kept apart: ``series(name)`` returns the RL
steps only unless asked otherwise, so no RL trend is ever fitted across SFT steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rlscope.analysis.aliases import resolve


@dataclass
class RunFrame:
    """A run as the analyses see it.

    ``raw``: metric name -> (steps, values), steps ascending and unique (int64), values float64 (NaN kept);
    ``sft_steps``: steps that were SFT, not RL; ``phases``: e.g. ``{"sft": [1, 400], "rl": [401, 550]}``;
    ``rollouts``: rows with at least step, completion, reward (a ``pyarrow.Table`` or a list of dicts; None when
    the source has no text; read them with :meth:`rollout_rows`); ``passk``: pass@k
    evaluations (``{"step", "kind": base|current, "n", "curve", "counts"}``); ``weights``: per-matrix weight-geometry rows;
    ``meta``: whatever else the source knows (framework, run name, world size, ...).
    """

    source: str
    format: str
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    sft_steps: frozenset[int] = frozenset()
    phases: dict = field(default_factory=dict)
    rollouts: list[dict] | None = None
    passk: list[dict] = field(default_factory=list)
    weights: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    _steps: np.ndarray | None = field(default=None, repr=False, compare=False)

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def from_long(cls, source: str, fmt: str, steps, names, values, **kw) -> "RunFrame":
        """From long-format columns (step, name, value: lists, numpy or pyarrow arrays); a (step, name) seen twice
        keeps its last value."""
        steps = np.asarray(steps, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        if isinstance(names, (list, tuple, np.ndarray)):  # a reader's lists: numpy (pyarrow would import pandas)
            labels, codes = np.unique(np.asarray(names, dtype=str), return_inverse=True)
            labels = labels.tolist()
        else:  # an Arrow column of a run store (millions of records): dictionary-encoded without a Python string each
            import pyarrow as pa

            chunked = names if isinstance(names, pa.ChunkedArray) else pa.chunked_array([names])
            encoded = pa.Table.from_arrays([chunked.dictionary_encode()], names=["n"]).unify_dictionaries()["n"]
            labels = encoded.chunk(0).dictionary.to_pylist() if encoded.num_chunks else []
            codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks]) \
                if encoded.num_chunks else np.zeros(0, np.int32)
        codes = codes.astype(np.uint16 if len(labels) < 1 << 16 else np.int64)  # small codes: numpy radix-sorts them
        order = np.argsort(codes, kind="stable")  # records grouped by name, each group in write order
        codes, steps, values = codes[order], steps[order], values[order]
        raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bounds = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1], True]) if codes.size else np.zeros(1, int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            s, v = steps[a:b], values[a:b]
            if s.size > 1 and not (np.diff(s) > 0).all():  # out of order or repeated: sort, the last write wins
                o = np.argsort(s, kind="stable")
                s, v = s[o], v[o]
                last = np.r_[s[1:] != s[:-1], True]
                s, v = s[last], v[last]
            raw[labels[codes[a]]] = (s, v)
        return cls(source=source, format=fmt, raw=raw, **kw)

    # -- reading ------------------------------------------------------------------------------------------------
    def rollout_rows(self, max_steps: int | None = None, per_step: int | None = None) -> list[dict]:
        """Rollout rows of the RL steps (dicts), at most ``per_step`` per step from at most ``max_steps`` steps spread
        evenly over the run (long runs hold millions of completions; the analyses read a sample)."""
        import pyarrow as pa

        if self.rollouts is None or not len(self.rollouts):
            return []
        table = self.rollouts if isinstance(self.rollouts, pa.Table) else pa.Table.from_pylist(self.rollouts)
        if "step" not in table.column_names:
            return []
        steps = table["step"].to_numpy(zero_copy_only=False).astype(np.int64)
        keep = ~np.isin(steps, np.fromiter(self.sft_steps, dtype=np.int64)) if self.sft_steps else np.ones(len(steps), bool)
        uniq = np.unique(steps[keep])
        if max_steps is not None:
            from rlscope.analysis.stats import even_indices

            uniq = uniq[even_indices(len(uniq), max_steps)]
        keep &= np.isin(steps, uniq)
        idx = np.flatnonzero(keep)
        if per_step is not None:
            order = idx[np.argsort(steps[idx], kind="stable")]
            s = steps[order]
            first = np.searchsorted(s, s, side="left")
            idx = order[(np.arange(len(order)) - first) < per_step]
        return table.take(pa.array(np.sort(idx))).to_pylist()


    def until(self, step: int) -> "RunFrame":
        """The run as it stood at ``step``: metrics, pass@k and weight rows up to it (no rollouts) -- what a detector
        would have seen live."""
        raw = {}
        for name, (s, v) in self.raw.items():
            k = int(np.searchsorted(s, step, side="right"))
            raw[name] = (s[:k], v[:k])
        return RunFrame(self.source, self.format, raw, self.sft_steps, self.phases, None,
                        [p for p in self.passk if p["step"] <= step], [w for w in self.weights if w["step"] <= step],
                        self.meta)

    def name_of(self, name: str) -> str | None:
        """The source's name for ``name`` (a raw name, or a canonical one through the alias table)."""
        if name in self.raw:
            return name
        return resolve(name, self.raw)

    def has(self, name: str, min_points: int = 1, rl_only: bool = True) -> bool:
        return len(self.series(name, rl_only)[0]) >= min_points

    def series(self, name: str, rl_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of a metric, finite values only; RL steps only unless ``rl_only`` is False."""
        raw = self.name_of(name)
        if raw is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        s, v = self.raw[raw]
        keep = np.isfinite(v)
        if rl_only and self.sft_steps:
            keep &= ~np.isin(s, np.fromiter(self.sft_steps, dtype=np.int64))
        return s[keep], v[keep]

    def _all_steps(self) -> np.ndarray:
        if self._steps is None:  # computed once: a long run holds millions of records
            self._steps = np.unique(np.concatenate([s for s, _ in self.raw.values()])) if self.raw \
                else np.zeros(0, np.int64)
        return self._steps

    @property
    def steps(self) -> int:
        """Number of distinct steps with any metric."""
        return int(self._all_steps().size)

    @property
    def last_step(self) -> int | None:
        """The last step with any metric (None for an empty frame)."""
        steps = self._all_steps()
        return int(steps[-1]) if steps.size else None

    @property
    def rl_steps(self) -> np.ndarray:
        """The distinct steps with any metric, SFT steps left out."""
        all_steps = self._all_steps()
        if self.sft_steps:
            all_steps = all_steps[~np.isin(all_steps, np.fromiter(self.sft_steps, dtype=np.int64))]
        return all_steps
