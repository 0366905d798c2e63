"""Recompute the token probes offline from the per-rank batches an :class:`~rlscope.callbacks.Observatory` dumped.

The same probe functions as the live callback run on the same joined batch (ranks in order), with the per-probe
state (e.g. the first step's p80) carried across steps in step order -- so offline and live values agree.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from rlscope.probes import PROBES, get_probe, scalars_of
from rlscope.probes.batch import concat, load_batch

_NAME = re.compile(r"step(\d+)-rank(\d+)\.pt$")


def dumped_steps(directory) -> dict[int, list[Path]]:
    """``{step: [rank0 file, rank1 file, ...]}`` of a dump directory."""
    found: dict[int, dict[int, Path]] = defaultdict(dict)
    for p in Path(directory).glob("step*-rank*.pt"):
        m = _NAME.search(p.name)
        if m:
            found[int(m.group(1))][int(m.group(2))] = p
    if not found:
        from rlscope.errors import MissingInput

        raise MissingInput(f"no token dumps (step<N>-rank<R>.pt) in {directory}")
    out = {}
    for step, ranks in sorted(found.items()):
        if sorted(ranks) != list(range(len(ranks))):
            raise ValueError(f"token dump of step {step} is missing ranks: have {sorted(ranks)}")
        out[step] = [ranks[r] for r in range(len(ranks))]
    return out


def recompute(directory, probes=None, probe_options: dict | None = None) -> dict[int, dict[str, float]]:
    """``{step: {"rlscope/<probe>/<stat>": value}}`` for every dumped step (scalar outputs only); ``probes``:
    default every registered probe of the ``tokens`` source."""
    options = probe_options or {}
    if probes is None:
        probes = [name for name, p in PROBES.items() if p.source == "tokens"]
    state: dict[str, dict] = defaultdict(dict)
    out: dict[int, dict[str, float]] = {}
    for step, files in dumped_steps(directory).items():
        batch = concat([load_batch(f) for f in files])
        row = {}
        for name in probes:
            res = get_probe(name).fn(batch, state[name], **options.get(name, {}))
            row.update({f"rlscope/{name}/{k}": v for k, v in scalars_of(res).items()})
        out[step] = row
    return out
