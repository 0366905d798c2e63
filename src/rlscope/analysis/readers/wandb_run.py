"""W&B runs: offline run files (``wandb/offline-run-*/run-*.wandb``) and, with credentials and network, ``wandb.Api()``.

wandb 0.31 ships no reader for offline run files, so :func:`read_records` reads the record log itself: a 7-byte header
(``:W&B``, 0xBEE1, version) and LevelDB-log records in 32 KiB blocks (crc32 u32, length u16, type u8: 1 full, 2 first,
3 middle, 4 last; the crc is zlib's crc32 of the type byte and the payload). Each payload is a
``wandb.proto.wandb_internal_pb2.Record``; history rows are its ``history.item`` (the metric's name in ``nested_key``
-- or ``key`` in older files --, the value as JSON). A torn or corrupt record ends the read: what came before it is kept.

The step of a row: rlscope's axis ``train/rlscope/step`` when the row has it; otherwise the trainer's
``train/global_step`` plus the run's offset (known from rows that carry both, e.g. after an SFT warm start); otherwise
W&B's own ``_step``. Names lose their ``train/`` prefix, so they read as in the run store. A resumed run's sessions
(one directory each) are read in order as one run. :func:`summary`, :func:`media` and :func:`artifacts` read what else
a run file holds (rlscope's tests check the analysis that ``rlscope analyze --wandb`` wrote with them).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections import Counter
from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader

HEADER = b":W&B"
BLOCK = 32 * 1024
RLSCOPE_STEP, TRAINER_STEP = "train/rlscope/step", "train/global_step"
INTERNAL = {"_step", "_runtime", "_timestamp", RLSCOPE_STEP, TRAINER_STEP}


def read_records(path: Path) -> tuple[list[bytes], bool]:
    """The payloads of a W&B record log, and whether it ended cleanly (False: a torn or corrupt record was left out)."""
    data = path.read_bytes()
    if data[:4] != HEADER:
        raise ValueError(f"{path}: not a W&B run file (it does not start with ':W&B')")
    pos, out, pending = 7, [], None
    while pos + 7 <= len(data):
        room = BLOCK - pos % BLOCK
        if room < 7:  # a block's tail too short for a record header is padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding up to the next block
            pos += room
            continue
        payload = data[pos + 7:pos + 7 + length]
        if len(payload) < length or zlib.crc32(bytes([kind]) + payload) != crc:
            return out, False
        pos += 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            pending = payload
        elif kind in (3, 4) and pending is not None:
            pending += payload
            if kind == 4:
                out.append(pending)
                pending = None
        else:
            return out, False
    return out, pending is None


def records(path: Path, kinds: tuple[str, ...]) -> tuple[list, bool]:
    """The parsed ``Record`` messages of the given kinds (``history``, ``summary``, ``run``, ``artifact``...) in one
    run file, and whether the file was whole."""
    from wandb.proto import wandb_internal_pb2 as pb

    payloads, clean = read_records(path)
    out = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") in kinds:
            out.append(record)
    return out, clean


def _item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def history_rows(path: Path) -> tuple[list[dict], bool]:
    """Every history row of an offline run file as ``{name: value}`` (numbers only), and whether the file was whole."""
    found, clean = records(path, ("history",))
    rows = []
    for record in found:
        row = {}
        for item in record.history.item:
            if item.key:
                key = item.key
            elif len(item.nested_key) == 1:
                key = item.nested_key[0]
            else:  # media (histograms, tables) are nested objects
                continue
            try:
                value = json.loads(item.value_json)
            except json.JSONDecodeError:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = float(value)
        rows.append(row)
    return rows, clean


def _each(path: Path, kinds: tuple[str, ...]):
    """The records of these kinds in every session of the run at ``path`` (a file, or a directory: see run_files)."""
    for file in run_files(path):
        yield from records(file, kinds)[0]


def media(path: Path) -> dict[str, str]:
    """The media a run logged, ``{name: W&B type}`` (``image-file``, ``html-file``, ``table-file``, ...)."""
    out = {}
    for record in _each(path, ("history",)):
        for item in record.history.item:
            key = _item_key(item)
            try:
                value = json.loads(item.value_json)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict) and "_type" in value:  # a medium as one object
                out[key] = value["_type"]
            elif key.endswith("/_type") and isinstance(value, str):  # ... or flattened, one item a field
                out[key[: -len("/_type")]] = value
    return out


def summary(path: Path) -> dict:
    """The run summary as the run's files left it: every summary update, in order."""
    out = {}
    for record in _each(path, ("summary",)):
        for item in record.summary.update:
            try:
                out[_item_key(item)] = json.loads(item.value_json)
            except json.JSONDecodeError:
                continue
        for item in record.summary.remove:
            out.pop(_item_key(item), None)
    return out


def artifacts(path: Path) -> list[dict]:
    """The artifacts a run logged: name, type and the files of each."""
    out = []
    for record in _each(path, ("artifact",)):
        a = record.artifact
        out.append({"name": a.name, "type": a.type, "files": [e.path for e in a.manifest.contents]})
    return out


def run_record(path: Path) -> dict:
    """The run's identity from its (first) run record: ``run_id``, ``project``, ``entity``, ``display_name``."""
    for record in _each(path, ("run",)):
        r = record.run
        return {"run_id": r.run_id, "project": r.project, "entity": r.entity, "display_name": r.display_name}
    return {}


def frame_from_rows(rows: list[dict], source: str, fmt: str, meta: dict) -> RunFrame:
    """Rows of ``{name: value}`` (W&B history) -> a frame on the run's step axis (see the module docstring)."""
    offsets = Counter(int(r[RLSCOPE_STEP] - r[TRAINER_STEP]) for r in rows if RLSCOPE_STEP in r and TRAINER_STEP in r)
    offset = offsets.most_common(1)[0][0] if offsets else 0
    steps, names, values = [], [], []
    for row in rows:
        if RLSCOPE_STEP in row:
            step = row[RLSCOPE_STEP]
        elif TRAINER_STEP in row:
            step = row[TRAINER_STEP] + offset
        elif "_step" in row:
            step = row["_step"]
        else:
            continue
        for key, value in row.items():
            if key in INTERNAL or (isinstance(value, float) and math.isinf(value)):
                continue
            steps.append(int(step)), names.append(key[len("train/"):] if key.startswith("train/") else key)
            values.append(value)
    if not steps:
        raise NoStepAxis(f"{source}: no history row with a step and a numeric metric")
    return RunFrame.from_long(source, fmt, steps, names, values, meta={**meta, "step_offset": offset})


def run_files(path: Path) -> list[Path]:
    """The run files of the run at ``path`` in the order they were written: a ``run-*.wandb`` file, its offline-run
    directory, or a ``wandb/`` directory (or the directory holding it: the latest run). A resumed offline run (e.g.
    ``rlscope analyze --wandb`` writing into a finished run) has one directory per session, ``...-<id>``,
    ``...-<id>-1``, ...: all of them, oldest first."""
    path = Path(path)
    if path.is_file() and path.suffix == ".wandb":
        return [path]
    if not path.is_dir():
        return []
    for pattern in ("run-*.wandb", "*run-*/run-*.wandb", "wandb/*run-*/run-*.wandb"):
        files = [f for f in path.glob(pattern) if f.is_file() and f.parent.name != "latest-run"]
        if files:
            break
    else:
        return []
    if pattern == "run-*.wandb":
        return sorted(files)[-1:]
    latest = max(files, key=_session_key)
    run_id = latest.stem[len("run-"):]
    return sorted((f for f in files if f.stem == f"run-{run_id}"), key=_session_key)


def _session_key(file: Path) -> tuple:
    """(start time, resume index) of a run directory named ``(offline-)run-YYYYmmdd_HHMMSS-<id>[-<n>]``."""
    name = file.parent.name.split("run-", 1)[-1]
    stamp, _, rest = name.partition("-")
    run_id = file.stem[len("run-"):]
    index = rest[len(run_id) + 1:] if rest.startswith(run_id + "-") else "0"
    return (stamp, int(index) if index.isdigit() else 0)


@reader
class WandbOfflineReader(Reader):
    name = "wandb"
    describe = "a W&B offline run (run-*.wandb, its offline-run-* directory, or a wandb/ directory: the latest run)"

    def detect(self, path: Path) -> bool:
        return bool(run_files(path))

    def read(self, path: Path) -> RunFrame:
        files = run_files(path)
        if not files:
            raise NoStepAxis(f"{path}: no W&B run file (run-*.wandb)")
        rows, clean = [], True
        for file in files:  # a resumed run: its sessions in order
            more, whole = history_rows(file)
            rows += more
            clean &= whole
        return frame_from_rows(rows, str(files[-1] if len(files) == 1 else files[0].parent.parent), self.name,
                               {"framework": "W&B (offline file)", "complete": clean, "sessions": len(files)})


@reader
class WandbApiReader(Reader):
    name = "wandb_api"
    describe = "a W&B run online: wandb://ENTITY/PROJECT/RUN_ID (needs credentials and network)"

    def detect(self, path) -> bool:
        return str(path).startswith("wandb://")

    def read(self, path) -> RunFrame:
        import wandb

        run_path = str(path)[len("wandb://"):]
        if run_path.count("/") != 2:
            raise ValueError(f"{path}: a W&B run is wandb://ENTITY/PROJECT/RUN_ID")
        run = wandb.Api().run(run_path)
        rows = [{k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
                for row in run.scan_history()]
        return frame_from_rows(rows, str(path), self.name, {"framework": "W&B (API)", "name": getattr(run, "name", "")})
