"""CSV tables, read with pyarrow: long format (columns step, name, value) or wide (a step column and one column per
metric: a W&B UI export, a notebook's training table).

Wide tables: the step column is the first of :data:`STEP_COLUMNS` present (W&B's own ``_step`` counter last); W&B
chart exports' ``<run> - <metric>`` headers lose the run prefix, their ``__MIN`` / ``__MAX`` band columns are left out;
``a / b`` display names become ``a/b``; a ``train/`` prefix is dropped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader

STEP_COLUMNS = ("step", "Step", "global_step", "train/global_step", "trainer/global_step", "_step")


def _floats(column) -> np.ndarray:
    """An Arrow column as float64, nulls as NaN, read from its buffers: ``to_numpy`` and ``fill_null`` would import
    pandas (0.3 s, more than reading a notebook's table takes)."""
    import pyarrow as pa

    a = column.cast(pa.float64()).combine_chunks()
    if len(a) == 0:
        return np.zeros(0)
    out = np.frombuffer(a.buffers()[1], np.float64, count=len(a), offset=a.offset * 8).copy()
    if a.null_count:
        valid = np.unpackbits(np.frombuffer(a.buffers()[0], np.uint8), bitorder="little")[a.offset:a.offset + len(a)]
        out[valid == 0] = np.nan
    return out


def metric_name(column: str) -> str:
    name = column.split(" - ", 1)[1] if " - " in column else column
    name = name.replace(" / ", "/")
    return name[len("train/"):] if name.startswith("train/") else name


@reader
class CsvReader(Reader):
    name = "csv"
    describe = "a CSV table: long (step, name, value) or wide (a step column, one column per metric)"

    def detect(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in (".csv", ".tsv")

    def read(self, path: Path) -> RunFrame:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        try:
            table = pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter))
        except pa.ArrowInvalid as exc:
            raise ValueError(f"{path}: not a readable CSV table ({exc})") from None
        cols = {c.lower(): c for c in table.column_names}
        if {"step", "name", "value"} <= set(cols):
            return RunFrame.from_long(str(path), "csv", _floats(table[cols["step"]]),
                                      table[cols["name"]].cast(pa.string()), _floats(table[cols["value"]]),
                                      meta={"framework": "CSV (long)"})
        step_col = next((c for c in STEP_COLUMNS if c in table.column_names), None)
        if step_col is None:
            raise NoStepAxis(f"{path}: no step column. A wide CSV needs one of {list(STEP_COLUMNS)}; a long one the "
                             f"columns step, name, value. It has {table.column_names[:12]}")
        steps = _floats(table[step_col])
        all_steps, all_names, all_values = [], [], []
        for col in table.column_names:
            if col == step_col or col in STEP_COLUMNS or col.endswith(("__MIN", "__MAX")):
                continue
            try:
                values = _floats(table[col])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue  # a text column
            keep = np.isfinite(steps) & np.isfinite(values)
            all_steps.append(steps[keep].astype(np.int64))
            all_names += [metric_name(col)] * int(keep.sum())
            all_values.append(values[keep])
        if not all_names:
            raise NoStepAxis(f"{path}: no numeric metric column beside the step column {step_col!r}")
        return RunFrame.from_long(str(path), "csv", np.concatenate(all_steps), all_names, np.concatenate(all_values),
                                  meta={"framework": "CSV (wide)", "step_column": step_col})
