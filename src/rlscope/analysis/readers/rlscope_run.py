"""rlscope's own run directory (``runs/<name>/``): every stream of the store, the phases and the schedule decisions.

Besides the metrics it adds two held-out series the analyses look for: ``heldout/pass@1`` (pass@1 of each pass@k
evaluation: the base curve at the start, then every current one) and ``heldout/accuracy`` (the greedy held-out
evaluations before and after RL, from ``evals.jsonl``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import Reader, reader


@reader
class RlscopeRunReader(Reader):
    name = "rlscope"
    describe = "an rlscope run directory (metrics.jsonl, meta.json)"

    def detect(self, path: Path) -> bool:
        return path.is_dir() and ((path / "metrics.jsonl").exists() or (path / "meta.json").exists())

    def read(self, path: Path, salvage: bool = False) -> RunFrame:
        import pyarrow as pa  # imported here: detecting another format must not pay for it
        import pyarrow.compute as pc

        from rlscope.store import RunReader

        run = RunReader(path, salvage=salvage)
        table = run.metric_records()  # the frame groups and deduplicates (the last write of a step wins)
        steps = table.column("step").to_numpy()
        names = table.column("name")
        values = pc.fill_null(table.column("value"), float("nan")).to_numpy()
        passk = run.records("passk")
        evals = [e for e in run.records("evals") if e.get("name") == "heldout/accuracy"]
        extra_s = [r["step"] for r in passk] + [e["step"] for e in evals]
        extra_n = ["heldout/pass@1"] * len(passk) + ["heldout/accuracy"] * len(evals)
        extra_v = [float(np.mean(r["counts"])) / r["n"] for r in passk] + [e["value"] for e in evals]  # pass@1
        meta = run.meta()
        phases = dict(meta.get("phases") or {})
        sft = set()
        if "sft" in phases:  # the warm start's last step is where RL starts: its base measurements (pass@k, held-out)
            sft.update(range(int(phases["sft"][0]), int(phases["sft"][1])))  # sit there, so it stays in the RL series
        schedule = (meta.get("summary") or {}).get("schedule") or {}
        sft.update(int(s) for s in schedule.get("sft_steps", []))
        rollouts = run.rollouts()
        weights = run.records("weights")
        skipped = {"skipped": dict(run.skipped)} if run.skipped else {}  # what salvage left out
        return RunFrame.from_long(
            str(path), self.name,
            np.concatenate([steps, np.asarray(extra_s, dtype=np.int64)]),
            pa.chunked_array([*names.chunks, pa.array(extra_n, pa.string())], type=pa.string()),
            np.concatenate([values, np.asarray(extra_v, dtype=np.float64)]),
            sft_steps=frozenset(sft), phases=phases,
            rollouts=rollouts if rollouts.num_rows else None,
            passk=passk, weights=weights,
            meta={"framework": "rlscope", **{k: meta[k] for k in ("task", "model", "world_size", "seed", "status")
                                               if k in meta}, "schedule": schedule.get("name"), **skipped})
