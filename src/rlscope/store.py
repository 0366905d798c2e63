"""The run directory: one writer (:class:`RunWriter`), one reader (:class:`RunReader`).

The layout of ``runs/<name>/`` is documented once, in docs/run-directory.md. Streams are JSON lines, one
record per line: ``metrics`` (long format: step, name, value), ``rollouts``, ``evals``, and the record streams of
probes (``passk``, ``weights``, ...: any ``<stream>.jsonl``).

JSON lines are append-only and flushed per record, so a crash can corrupt at most the last (torn) line; the reader
skips a torn last line (a whole record that lost only its newline is kept). A corrupt line anywhere else is an error
naming the file and the line; ``RunReader(..., salvage=True)`` (``rlscope analyze --salvage``) skips such lines
instead, and says which. ``meta.json``, ``config.yaml`` and the other single-document files are replaced atomically
(written to a temporary file, then renamed), so a crash leaves the old or the new one, never half. A run resumed from
step S first drops the records of steps > S (those steps run again), so no step appears twice.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

from rlscope.errors import UsageError

STREAMS = ("metrics", "rollouts", "evals", "passk", "weights")  # the streams rlscope itself writes
_STREAM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value  # json writes Infinity; NaN is stored as null
    return value


def _whole_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _corrupt(path: Path, line: int, text: bytes) -> "UsageError":
    from rlscope.errors import UsageError

    shown = text[:80].decode("utf-8", "replace")
    return UsageError(f"{path}: line {line} is corrupt (not a torn last record): {shown!r}; `rlscope analyze "
                      f"--salvage` (RunReader(..., salvage=True)) reads the run around it, skipping such lines")


def _read_jsonl(path: Path, salvage: bool = False, skipped: dict | None = None) -> list[dict]:
    """The records of a JSON-lines file. A torn tail -- whatever follows the last whole record and cannot be read (a
    write cut by a crash, or the zeros a power loss can leave) -- is left out; a corrupt line with whole records after
    it is an error naming it, or with ``salvage`` is left out and its number noted in ``skipped[path.name]``."""
    if not path.exists():
        return []
    records, bad = [], []
    for i, line in enumerate(path.read_bytes().split(b"\n")):
        if not line.strip(b" \t\r\x00"):
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError):
            bad.append((i + 1, line))
            continue
        if bad:  # corrupt lines before a whole record: not a torn tail
            if not salvage:
                raise _corrupt(path, *bad[0]) from None
            if skipped is not None:
                skipped.setdefault(path.name, []).extend(n for n, _ in bad)
            bad = []
        records.append(record)
    return records


def _read_table(path: Path, schema=None, salvage: bool = False, skipped: dict | None = None):
    """A stream as a ``pyarrow.Table`` through pyarrow's (C++) JSON reader -- fast on millions of records -- with the
    same rules as :func:`_read_jsonl`: a torn last line is left out; a corrupt line elsewhere is an error naming it
    (with ``salvage``, left out)."""
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
    if not whole:  # a crash mid-write leaves a last line without its newline: read what precedes it (and the line
        data = path.read_bytes()  # itself when it is a whole record that lost only its newline)
        cut = data.rfind(b"\n") + 1
        source = io.BytesIO(data + b"\n" if _whole_record(data[cut:]) else data[:cut])
        if not source.getbuffer().nbytes:
            return empty
    options = paj.ParseOptions(explicit_schema=schema) if schema is not None else None
    try:
        return paj.read_json(source, read_options=paj.ReadOptions(block_size=16 << 20), parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # the line-by-line reader names the corrupt line (or skips it)
        rows = _read_jsonl(path, salvage, skipped)
        if schema is not None:
            rows = [{f.name: r.get(f.name) for f in schema} for r in rows]
            return pa.Table.from_pylist(rows, schema=schema) if rows else empty
        return pa.Table.from_pylist(rows)


def _drop_torn_tail(path: Path) -> None:
    """Before appending after a crash: cut the torn tail (what follows the last whole record, as the reader sees
    it), and give a whole last record that lost only its newline its newline back."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    end = len(data)
    while end > 0:
        start = data.rfind(b"\n", 0, end - 1) + 1 if end > 1 else 0
        line = data[start:end].rstrip(b"\n")
        if line.strip(b" \t\r\x00") and _whole_record(line):
            break
        end = start
    keep = data[:end] if data[:end].endswith(b"\n") or end == 0 else data[:end] + b"\n"
    if keep != data:
        with open(path, "r+b") as f:
            f.truncate(min(end, len(data)))
            if len(keep) > end:
                f.seek(0, os.SEEK_END)
                f.write(b"\n")


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``path`` whole or not at all: a temporary file beside it, flushed to disk, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class StoreFull(UsageError, OSError):
    """The run store's disk (or quota) is full; the message says what stays intact and how to go on (one line on
    the command line, like a usage error; also an ``OSError``)."""

    def __init__(self, message: str):
        import errno

        super().__init__(message)
        self.errno = errno.ENOSPC


class RunLock:
    """One writer per run directory: an exclusive ``flock`` on ``<run>/.lock``, held while the run lives. The
    operating system drops it when the process ends, however it ends (``kill -9`` included), so a resume after a
    crash takes it again; a second run while the first is alive is refused with who holds it."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._file = None

    def acquire(self) -> None:
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            from rlscope.errors import UsageError

            raise UsageError(f"run directory {self.path.parent} is in use by another run ({holder}): give this run "
                             f"another run_name, or wait for that one to end (a resume after it ends is fine)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}, since {now()}")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None


class RunWriter:
    """Appends to a run directory; safe to create on every rank but only the main process should write."""

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Any] = {}

    # -- static parts ----------------------------------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        import yaml

        atomic_write(self.dir / "config.yaml", yaml.safe_dump(config, sort_keys=True))

    def write_meta(self, meta: dict) -> None:
        path = self.dir / "meta.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(meta)
        atomic_write(path, json.dumps(old, indent=2, default=str))

    # -- streams ---------------------------------------------------------------------------------------------------
    def _append(self, stream: str, records: Iterable[dict]) -> None:
        try:
            f = self._files.get(stream)
            if f is None:
                path = self.dir / f"{stream}.jsonl"
                _drop_torn_tail(path)
                f = self._files[stream] = open(path, "a", encoding="utf-8")
            for rec in records:
                f.write(json.dumps({k: _clean(v) for k, v in rec.items()}, default=str) + "\n")
            f.flush()
        except OSError as exc:
            import errno

            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self._files.pop(stream, None)
            raise StoreFull(f"no space left to write {self.dir / (stream + '.jsonl')} ({exc.strerror}): the run "
                            f"stops here; its checkpoints so far are intact under {self.dir / 'checkpoints'} and a "
                            f"record cut short is dropped on resume -- free space, then resume with "
                            f"`--resume_from_checkpoint true`") from exc

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
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


class RunReader:
    """Reads a run directory written by :class:`RunWriter`. ``salvage``: read around corrupt lines and unreadable
    files instead of stopping at them; ``skipped`` says what was left out (``{file: [line numbers] or "unreadable"}``)."""

    def __init__(self, run_dir: str | Path, salvage: bool = False):
        self.dir, self.salvage, self.skipped = Path(run_dir), salvage, {}
        if not self.dir.is_dir():
            from rlscope.errors import MissingInput

            raise MissingInput(f"no run directory at {self.dir}")

    def _document(self, name: str, load) -> dict:
        path = self.dir / name
        if not path.exists():
            return {}
        try:
            value = load(path.read_text())
            if not isinstance(value, dict):
                raise ValueError(f"not a mapping but {type(value).__name__}")
            return value
        except Exception as exc:  # JSON, YAML or decoding errors: the file is damaged
            if self.salvage:
                self.skipped[name] = "unreadable"
                return {}
            from rlscope.errors import UsageError

            raise UsageError(f"{path} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}); `rlscope "
                             f"analyze --salvage` reads the run without it") from None

    def config(self) -> dict:
        import yaml

        return self._document("config.yaml", yaml.safe_load)

    def meta(self) -> dict:
        return self._document("meta.json", json.loads)

    def streams(self) -> list[str]:
        """rlscope's streams and any other ``<stream>.jsonl`` in the run directory."""
        return sorted({*STREAMS, *(p.stem for p in self.dir.glob("*.jsonl") if _STREAM_NAME.match(p.stem))})

    def records(self, stream: str) -> list[dict]:
        from rlscope.registry import check_names

        check_names("stream", [stream], self.streams(), where=f"in {self.dir}")
        return _read_jsonl(self.dir / f"{stream}.jsonl", self.salvage, self.skipped)

    def metric_records(self):
        """Every metric record as written, a ``pyarrow.Table`` (step, name, value; null for NaN), in file order --
        for bulk readers that group and deduplicate themselves (:meth:`metrics` does it here)."""
        import pyarrow as pa

        schema = pa.schema([("step", pa.int64()), ("name", pa.string()), ("value", pa.float64())])
        return _read_table(self.dir / "metrics.jsonl", schema, self.salvage, self.skipped)

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
        return _read_table(self.dir / "rollouts.jsonl", None, self.salvage, self.skipped)

    def evals(self) -> list[dict]:
        return self.records("evals")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
