"""W&B runs: offline run files (``wandb/offline-run-*/run-*.wandb``) and, with credentials and network, ``wandb.Api()``.

wandb 0.31 ships no reader for offline run files, so :func:`read_records` reads the record log itself: a 7-byte header
(``:W&B``, 0xBEE1, version) and LevelDB-log records in 32 KiB blocks (crc32 u32, length u16, type u8: 1 full, 2 first,
3 middle, 4 last; the crc is zlib's crc32 of the type byte and the payload). Each payload is a
``wandb.proto.wandb_internal_pb2.Record``; history rows are its ``history.item`` (the metric's name in ``nested_key``
-- or ``key`` in older files --, the value as JSON). A torn or corrupt record ends the read: what came before it is kept.

The step of a row: rlscope's axis ``train/rlscope/step`` when the row has it; otherwise the trainer's
``train/global_step`` plus the run's offset (known from rows that carry both, e.g. after an SFT warm start); otherwise
W&B's own ``_step``. Names lose their ``train/`` prefix, so they read as in the run store.
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


def history_rows(path: Path) -> tuple[list[dict], bool]:
    """Every history row of an offline run file as ``{name: value}`` (numbers only), and whether the file was whole."""
    from wandb.proto import wandb_internal_pb2 as pb

    payloads, clean = read_records(path)
    rows = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
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


def _run_file(path: Path) -> Path | None:
    if path.is_file() and path.suffix == ".wandb":
        return path
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb")) or sorted(path.glob("offline-run-*/run-*.wandb")) or \
            sorted(path.glob("wandb/offline-run-*/run-*.wandb"))
        return files[-1] if files else None  # several runs: the latest
    return None


@reader
class WandbOfflineReader(Reader):
    name = "wandb"
    describe = "a W&B offline run (run-*.wandb, its offline-run-* directory, or a wandb/ directory: the latest run)"

    def detect(self, path: Path) -> bool:
        return _run_file(path) is not None

    def read(self, path: Path) -> RunFrame:
        file = _run_file(path)
        if file is None:
            raise NoStepAxis(f"{path}: no W&B run file (run-*.wandb)")
        rows, clean = history_rows(file)
        return frame_from_rows(rows, str(file), self.name, {"framework": "W&B (offline file)", "complete": clean})


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
