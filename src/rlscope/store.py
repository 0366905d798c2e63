"""The run directory: one writer (:class:`RunWriter`), one reader (:class:`RunReader`).

Layout of ``runs/<name>/``::

    config.yaml        the resolved recipe (every field of every argument dataclass)
    meta.json          versions, world size, seed, task, model, start time
    metrics.jsonl      long format, one JSON object per line: {"step": int, "name": str, "value": float}
    rollouts.jsonl     one object per completion: step, rank, prompt, completion, reward, advantage, length; ``step`` is
                       the optimizer step at which the batch was generated (with steps_per_generation k, every k-th)
    evals.jsonl        held-out evaluations: {"step", "phase", "name", "value"}
    checkpoints/       trainer checkpoints (checkpoint-N/), resumable
    models/            saved models (init/, sft/, final/)
    wandb/             the W&B (offline) directory, when report_to includes wandb

JSON lines are append-only and flushed per record, so a crash can corrupt at most the last (torn) line; the reader
skips a torn last line. A run resumed from step S first drops the records of steps > S (those steps run again), so
no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

STREAMS = ("metrics", "rollouts", "evals", "passk", "weights")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value  # json writes Infinity; NaN is stored as null
    return value


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i >= len(lines) - 2:  # the last line (maybe followed by nothing): a torn write, skipped
                continue
            raise ValueError(f"{path}: line {i + 1} is corrupt (not a torn last record)") from None
    return records


def _drop_torn_tail(path: Path) -> None:
    """A crash mid-write leaves a last line with no newline: cut it before appending after it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class RunWriter:
    """Appends to a run directory; safe to create on every rank but only the main process should write."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}

    # -- static parts ----------------------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        import yaml

        tmp = self.dir / "config.yaml.tmp"
        tmp.write_text(yaml.safe_dump(config, sort_keys=True))
        os.replace(tmp, self.dir / "config.yaml")

    def write_meta(self, meta: dict) -> None:
        path = self.dir / "meta.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(meta)
        tmp = self.dir / "meta.json.tmp"
        tmp.write_text(json.dumps(old, indent=2, default=str))
        os.replace(tmp, path)

    # -- streams ---------------------------------------------------------------------------------------------------
    def _append(self, stream: str, records: Iterable[dict]) -> None:
        f = self._files.get(stream)
        if f is None:
            path = self.dir / f"{stream}.jsonl"
            _drop_torn_tail(path)
            f = self._files[stream] = open(path, "a", encoding="utf-8")
        for rec in records:
            f.write(json.dumps({k: _clean(v) for k, v in rec.items()}, default=str) + "\n")
        f.flush()

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        recs = []
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            recs.append({"step": int(step), "name": name, "value": float(value)})
        self._append("metrics", recs)

    def log_rollouts(self, rows: list[dict]) -> None:
        self._append("rollouts", rows)

    def log_eval(self, step: int, phase: str, values: dict[str, float]) -> None:
        self._append("evals", [{"step": int(step), "phase": phase, "name": k, "value": float(v)}
                               for k, v in values.items()])

    def log_passk(self, step: int, kind: str, record: dict) -> None:
        """One pass@k evaluation: ``kind`` "base" (before the first update, the reference) or "current"."""
        self._append("passk", [{"step": int(step), "kind": kind, **record}])

    def log_weights(self, step: int, per_matrix: dict[str, dict[str, float]]) -> None:
        """Per-matrix weight-geometry statistics of one probe."""
        self._append("weights", [{"step": int(step), "matrix": name, **stats} for name, stats in per_matrix.items()])

    def truncate_after(self, step: int) -> None:
        """Drop stream records of steps > ``step`` (a resume from ``step`` will write them again)."""
        self.close()
        for stream in ("metrics", "rollouts", "passk", "weights"):
            path = self.dir / f"{stream}.jsonl"
            if not path.exists():
                continue
            keep = [r for r in _read_jsonl(path) if r.get("step", 0) <= step]
            tmp = path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, path)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class RunReader:
    """Reads a run directory written by :class:`RunWriter`."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        if not self.dir.is_dir():
            raise FileNotFoundError(f"no run directory at {self.dir}")

    def config(self) -> dict:
        import yaml

        path = self.dir / "config.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else {}

    def meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def records(self, stream: str) -> list[dict]:
        if stream not in STREAMS:
            raise ValueError(f"unknown stream {stream!r}; streams: {STREAMS}")
        return _read_jsonl(self.dir / f"{stream}.jsonl")

    def metrics(self):
        """Metrics as a ``pyarrow.Table`` (step, name, value), one row per (step, name): the last write wins."""
        import pyarrow as pa

        last: dict[tuple[int, str], float] = {}
        for r in self.records("metrics"):
            last[(r["step"], r["name"])] = r["value"]
        items = sorted(last.items())
        return pa.table({"step": [k[0] for k, _ in items], "name": [k[1] for k, _ in items],
                         "value": [float("nan") if v is None else v for _, v in items]},
                        schema=pa.schema([("step", pa.int64()), ("name", pa.string()), ("value", pa.float64())]))

    def metric_names(self) -> list[str]:
        return sorted({r["name"] for r in self.records("metrics")})

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric; a clear error for an unknown name."""
        table = self.metrics()
        names = set(table.column("name").to_pylist())
        if name not in names:
            raise KeyError(f"metric {name!r} is not in {self.dir}; it has {sorted(names)}")
        rows = [(s, v) for s, n, v in zip(*(table.column(c).to_pylist() for c in ("step", "name", "value")))
                if n == name]
        return [s for s, _ in rows], [v for _, v in rows]

    def rollouts(self):
        import pyarrow as pa

        rows = self.records("rollouts")
        return pa.Table.from_pylist(rows) if rows else pa.table({})

    def evals(self) -> list[dict]:
        return self.records("evals")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
