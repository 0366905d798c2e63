"""pass@k curve tables, as papers publish them (e.g. Yue et al. 2025, "Does Reinforcement Learning Really Incentivize
Reasoning Capacity in LLMs Beyond the Base Model?"): a k column and one column per model, or long form (columns k,
model, value). CSV or TSV.

Wide tables: the k column is named ``k`` (``K``) or ``pass@k``; every other numeric column is a model's pass@k at the
listed k (which need not be 1..n: powers of two are common). Values are fractions in [0, 1] or percentages in
[0, 100] (detected per table and converted; ``meta["units"]`` says which). The base is the column whose name contains
"base" (case-insensitive); if none does, the first model column is taken as the base and ``meta["base_guess"]`` says
so. The other columns are *current* curves (e.g. RL checkpoints), ordered by a step number in their names when each
has one (``rl_step_400``, ``ckpt-200``), else in table order; the last is the final one.

The frame holds no metric series, only ``passk`` records ``{"step", "kind", "n", "curve", "ks", "counts": None,
"label"}`` (``n`` the largest listed k; ``step`` 0 for the base, the parsed step or 1, 2, ... for the others): the
boundary analysis works from the curves (no per-prompt counts, hence no intervals).
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader
from rlscope.analysis.readers.csv_table import STEP_COLUMNS

K_COLUMNS = ("k", "pass@k", "pass_at_k", "pass@k k")  # compared lower-cased and stripped
MODEL_COLUMNS = ("model", "name", "method", "series", "checkpoint")  # long form: which curve a row belongs to
VALUE_COLUMNS = ("value", "pass@k", "pass_at_k", "pass", "score", "accuracy")  # long form: the pass@k
K_CELL = re.compile(r"^\s*(?:pass\s*@\s*|@)?(\d+(?:\.0*)?)\s*$", re.IGNORECASE)  # 4, 4.0, pass@4, @4
STEP_IN_NAME = re.compile(r"(?:global[_\- ]?step|step|ckpt|checkpoint|iter(?:ation)?)[\s_\-@:=]*(\d+)|(\d+)\s*steps?\b",
                          re.IGNORECASE)
FIX = ("A pass@k curve table has a k column (k, K or pass@k) and one column per model holding pass@k at that k "
       "(fractions in [0, 1] or percentages), or the long form k, model, value")
HEAD_BYTES = 4096


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _rows(text: str, delimiter: str) -> list[list[str]]:
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text), delimiter=delimiter)
            if any(c.strip() for c in row)]


def _number(cell: str) -> tuple[float | None, bool, int]:
    """``(value, percent_sign, decimals)`` of a cell; value None for an empty or non-numeric cell."""
    cell = cell.strip()
    pct = cell.endswith("%")
    body = cell[:-1].strip() if pct else cell
    try:
        v = float(body)
    except ValueError:
        return None, pct, 0
    if not math.isfinite(v):
        return None, pct, 0
    decimals = len(body.split(".", 1)[1]) if "." in body and "e" not in body.lower() else 0
    return v, pct, decimals


def _k_column(header: list[str]) -> int | None:
    low = [h.lower().strip() for h in header]
    for name in K_COLUMNS:  # "k" before "pass@k": in long form pass@k may be the value column
        if name in low:
            return low.index(name)
    return None


def _long_columns(header: list[str], k_col: int) -> tuple[int, int] | None:
    low = [h.lower().strip() for h in header]
    model = next((low.index(n) for n in MODEL_COLUMNS if n in low), None)
    value = next((i for n in VALUE_COLUMNS for i, h in enumerate(low) if h == n and i != k_col), None)
    return (model, value) if model is not None and value is not None else None


def step_of(name: str) -> int | None:
    """The training step a column name states (``rl_step_400``, ``ckpt-200``, ``300 steps``), else None."""
    m = STEP_IN_NAME.search(name)
    return int(m.group(1) or m.group(2)) if m else None


@reader
class PasskCurveReader(Reader):
    name = "passk_curve"
    describe = ("a pass@k curve table (CSV/TSV: a k column and one pass@k column per model -- base and RL -- or long "
                "form k, model, value), as papers publish them")

    def detect(self, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() not in (".csv", ".tsv"):
            return False
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES).decode("utf-8", "replace")
        if len(head) >= HEAD_BYTES and "\n" in head:
            head = head[: head.rindex("\n")]  # whole lines only
        try:
            rows = _rows(head, _delimiter(path))
        except csv.Error:
            return False
        if len(rows) < 2:
            return False
        header = rows[0]
        k_col = _k_column(header)
        if k_col is None or any(h in STEP_COLUMNS or h.lower() == "step" for h in header):
            return False  # a k column, and no step column (a training log with a 'k' metric stays a CSV log)
        if _long_columns(header, k_col) is not None:
            return True
        # wide: at least two model columns with a number in the first rows (k itself may be malformed: read() says so)
        numeric = [j for j in range(len(header)) if j != k_col
                   and any(j < len(r) and _number(r[j])[0] is not None for r in rows[1:6])]
        return len(numeric) >= 2

    def read(self, path: Path) -> RunFrame:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not a text table ({exc})") from None
        try:
            rows = _rows(text, _delimiter(path))
        except csv.Error as exc:
            raise ValueError(f"{path}: not a readable CSV table ({exc})") from None
        if len(rows) < 2:
            raise NoStepAxis(f"{path}: no rows under the header. {FIX}.")
        header, body = rows[0], rows[1:]
        k_col = _k_column(header)
        if k_col is None:
            raise NoStepAxis(f"{path}: no k column (k, K or pass@k) in {header[:12]}. {FIX}.")
        long = _long_columns(header, k_col)
        form = "long" if long else "wide"
        columns, ignored, percent_sign = (self._long(path, header, body, k_col, *long) if long
                                          else self._wide(path, header, body, k_col))
        if len(columns) < 2:
            raise NoStepAxis(f"{path}: {len(columns)} model column(s) with pass@k values ({list(columns)}); the "
                             f"boundary needs a base and at least one RL curve. {FIX}.")
        units = self._units(path, columns, percent_sign)
        scale = 100.0 if units.startswith("percent") else 1.0
        curves = {}
        for name, points in columns.items():
            ks = sorted(points)
            vals = [points[k][0] / scale for k in ks]
            for (k0, v0), (k1, v1) in zip(zip(ks, vals), zip(ks[1:], vals[1:])):
                # within rounding: each printed value is off by up to half a unit of its last decimal
                tol = (0.5 * 10.0 ** -points[k0][1] + 0.5 * 10.0 ** -points[k1][1]) / scale + 1e-9
                if v1 < v0 - tol:
                    raise ValueError(
                        f"{path}: the curve {name!r} decreases in k ({points[k0][0]:g} at k = {k0}, "
                        f"{points[k1][0]:g} at k = {k1}), but pass@k can only grow with k. Is the column pass@k of "
                        f"one model (not a step or an accuracy over training), and the table not transposed? Fix or "
                        f"drop that column")
            curves[name] = (ks, vals)
        names = list(curves)
        base_named = [n for n in names if "base" in n.lower()]
        meta = {"framework": f"pass@k curve table ({form})", "units": units, "columns": names}
        if base_named:
            base = base_named[0]
            meta["base_from"] = "name"
            if len(base_named) > 1:
                meta["base_guess"] = (f"several columns name 'base' ({base_named}): the first, {base!r}, is taken "
                                      f"as the base, the others as RL curves")
        else:
            base = names[0]
            meta["base_from"] = "first column"
            meta["base_guess"] = (f"no column name contains 'base': the first model column, {base!r}, is taken as "
                                  f"the base model")
        current = [n for n in names if n != base]
        parsed = [step_of(n) for n in current]
        if all(s is not None for s in parsed) and len(set(parsed)) == len(parsed) and min(parsed) > 0:
            order = sorted(zip(parsed, current))
            meta["order"] = "by the step in the column names"
        else:
            order = list(enumerate(current, start=1))
            meta["order"] = "table order (steps 1, 2, ... stand for the order)" if len(current) > 1 else "one RL curve"
        meta["base_column"] = base
        meta["current_columns"] = [n for _, n in order]
        if ignored:
            meta["ignored_columns"] = ignored
        records = [self._record(0, "base", base, *curves[base])]
        records += [self._record(step, "current", name, *curves[name]) for step, name in order]
        return RunFrame(source=str(path), format=self.name, passk=records, meta=meta)

    @staticmethod
    def _record(step: int, kind: str, label: str, ks: list[int], vals: list[float]) -> dict:
        return {"step": int(step), "kind": kind, "n": int(ks[-1]), "curve": [float(v) for v in vals],
                "ks": [int(k) for k in ks], "counts": None, "label": label}

    @staticmethod
    def _k(path: Path, cell: str, k_name: str, line: int) -> int:
        m = K_CELL.match(cell)
        if not m or float(m.group(1)) < 1:
            raise ValueError(f"{path}: the k column {k_name!r} holds {cell!r} (line {line}), not a number of samples "
                             f"k >= 1. Give k as integers (1, 2, 4, ...; 'pass@4' is read as 4), one row per k")
        return int(float(m.group(1)))

    def _wide(self, path, header, body, k_col):
        k_name = header[k_col]
        cols: dict[str, dict[int, tuple[float, int]]] = {}
        percent_sign = False
        text_cells: dict[int, str] = {}
        ks_seen: set[int] = set()
        for i, row in enumerate(body, start=2):
            k = self._k(path, row[k_col] if k_col < len(row) else "", k_name, i)
            if k in ks_seen:
                raise ValueError(f"{path}: k = {k} is listed twice (line {i}). One table per benchmark and decoding "
                                 f"setting: one row per k")
            ks_seen.add(k)
            for j, name in enumerate(header):
                if j == k_col or j >= len(row) or not row[j]:
                    continue
                v, pct, dec = _number(row[j])
                if v is None:
                    text_cells.setdefault(j, row[j])
                    continue
                cols.setdefault(name or f"column {j + 1}", {})[k] = (v, dec)
                percent_sign |= pct
        ignored = []
        for j, cell in text_cells.items():
            name = header[j] or f"column {j + 1}"
            if name in cols:
                raise ValueError(f"{path}: column {name!r} mixes numbers and text ({cell!r}). {FIX}; leave a "
                                 f"missing value empty")
            ignored.append(name)
        return cols, ignored, percent_sign

    def _long(self, path, header, body, k_col, model_col, value_col):
        k_name = header[k_col]
        cols: dict[str, dict[int, tuple[float, int]]] = {}
        percent_sign = False
        for i, row in enumerate(body, start=2):
            if max(k_col, model_col, value_col) >= len(row):
                raise ValueError(f"{path}: line {i} has {len(row)} cells, fewer than the header's {len(header)}")
            k = self._k(path, row[k_col], k_name, i)
            model = row[model_col]
            v, pct, dec = _number(row[value_col])
            if v is None:
                if not row[value_col]:
                    continue
                raise ValueError(f"{path}: the value column {header[value_col]!r} holds {row[value_col]!r} (line "
                                 f"{i}), not a number. {FIX}")
            if k in cols.setdefault(model, {}):
                raise ValueError(f"{path}: model {model!r} has k = {k} twice (line {i}): one row per (k, model)")
            cols[model][k] = (v, dec)
            percent_sign |= pct
        return cols, [], percent_sign

    @staticmethod
    def _units(path: Path, columns: dict, percent_sign: bool) -> str:
        """"fractions" or "percent (...)"; a '%' on any cell makes the whole table percentages."""
        values = [(v, name, k) for name, pts in columns.items() for k, (v, _) in pts.items()]
        lo, hi = min(values), max(values)
        if lo[0] >= 0 and hi[0] <= 1 and not percent_sign:
            return "fractions"
        if lo[0] >= 0 and hi[0] <= 100:
            why = "'%' signs" if percent_sign else f"values up to {hi[0]:g}"
            return f"percent ({why}; divided by 100)"
        bad = lo if lo[0] < 0 else hi
        raise ValueError(f"{path}: {bad[1]!r} at k = {bad[2]} holds {bad[0]:g}, outside [0, 1] (fractions) and "
                         f"[0, 100] (percentages): pass@k is a probability. Give pass@k as fractions or percentages")
