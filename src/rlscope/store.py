"""The run directory: one writer (:class:`RunWriter`), one reader (:class:`RunReader`).

The layout of ``runs/<name>/`` is documented once, in the README ("The run directory"). Streams are JSON lines, one
record per line: ``metrics`` (long format: step, name, value), ``rollouts``, ``evals``, and the record streams of
probes (``passk``, ``weights``, ...: any ``<stream>.jsonl``).

JSON lines are append-only and flushed per record, so a crash can corrupt at most the last (torn) line; the reader
skips a torn last line. A run resumed from step S first drops the records of steps > S (those steps run again), so
no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

STREAMS = ("metrics", "rollouts", "evals", "passk", "weights")  # the streams rlscope itself writes
_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


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


def _read_table(path: Path, schema=None):
    """A stream as a ``pyarrow.Table`` through pyarrow's (C++) JSON reader -- fast on millions of records -- with the
    same rules as :func:`_read_jsonl`: a torn last line is left out; a corrupt line elsewhere is an error naming it."""
    import io

    import pyarrow as pa
    import pyarrow.json as paj

    empty = pa.table({f.name: pa.array([], f.type) for f in schema}) if schema is not None else pa.table({})
    if not path.exists() or path.stat().st_size == 0:
        return empty
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        whole = f.read(1) == b"\n"
    source = path
    if not whole:  # a crash mid-write leaves a last line without its newline: read what precedes it
        data = path.read_bytes()
        source = io.BytesIO(data[:data.rfind(b"\n") + 1])
        if not source.getbuffer().nbytes:
            return empty
    options = paj.ParseOptions(explicit_schema=schema) if schema is not None else None
    try:
        return paj.read_json(source, read_options=paj.ReadOptions(block_size=16 << 20), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.Table.from_pylist(_read_jsonl(path))  # the line-by-line reader names the corrupt line


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

    def log_records(self, stream: str, step: int, rows: list[dict]) -> None:
        """Rows of a probe's record stream (``<stream>.jsonl``), each stored with ``step``."""
        if not _STREAM_NAME.match(stream) or stream in ("metrics", "evals"):
            raise ValueError(f"record stream {stream!r}: a lower-case name other than metrics and evals")
        self._append(stream, [{"step": int(step), **row} for row in rows])

    def truncate_after(self, step: int) -> None:
        """Drop stream records of steps > ``step`` (a resume from ``step`` will write them again); the held-out
        evaluations (``evals``) stay."""
        self.close()
        for path in sorted(self.dir.glob("*.jsonl")):
            if path.stem == "evals":
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
            from rlscope.errors import MissingInput

            raise MissingInput(f"no run directory at {self.dir}")

    def config(self) -> dict:
        import yaml

        path = self.dir / "config.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else {}

    def meta(self) -> dict:
        path = self.dir / "meta.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def streams(self) -> list[str]:
        """rlscope's streams and any other ``<stream>.jsonl`` in the run directory."""
        return sorted({*STREAMS, *(p.stem for p in self.dir.glob("*.jsonl") if _STREAM_NAME.match(p.stem))})

    def records(self, stream: str) -> list[dict]:
        from rlscope.registry import check_names

        check_names("stream", [stream], self.streams(), where=f"in {self.dir}")
        return _read_jsonl(self.dir / f"{stream}.jsonl")

    def metric_records(self):
        """Every metric record as written, a ``pyarrow.Table`` (step, name, value; null for NaN), in file order --
        for bulk readers that group and deduplicate themselves (:meth:`metrics` does it here)."""
        import pyarrow as pa

        schema = pa.schema([("step", pa.int64()), ("name", pa.string()), ("value", pa.float64())])
        return _read_table(self.dir / "metrics.jsonl", schema)

    def metrics(self):
        """Metrics as a ``pyarrow.Table`` (step, name, value) sorted by step and name, one row per (step, name): the
        last write wins; NaN for values stored as null."""
        import pyarrow as pa
        import pyarrow.compute as pc

        schema = pa.schema([("step", pa.int64()), ("name", pa.string()), ("value", pa.float64())])
        table = self.metric_records()
        table = table.group_by(["step", "name"], use_threads=False).aggregate([("value", "last")])
        table = table.rename_columns(["step", "name", "value"]).select(["step", "name", "value"])
        table = table.set_column(2, "value", pc.fill_null(table["value"], float("nan")))
        return table.sort_by([("step", "ascending"), ("name", "ascending")]).cast(schema)

    def metric_names(self) -> list[str]:
        return sorted(set(self.metrics().column("name").to_pylist()))

    def series(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric; the usual error (closest name) for a metric the run does not have."""
        from rlscope.registry import check_names

        table = self.metrics()
        check_names("metric", [name], set(table.column("name").to_pylist()), where=f"in {self.dir}")
        rows = [(s, v) for s, n, v in zip(*(table.column(c).to_pylist() for c in ("step", "name", "value")))
                if n == name]
        return [s for s, _ in rows], [v for _, v in rows]

    def rollouts(self):
        """Rollouts as a ``pyarrow.Table`` (one row per completion)."""
        return _read_table(self.dir / "rollouts.jsonl")

    def evals(self) -> list[dict]:
        return self.records("evals")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
