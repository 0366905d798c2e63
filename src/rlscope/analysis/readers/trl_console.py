"""transformers / TRL Trainer console output: the python dict ``trainer.train()`` prints per logging step, as pasted
from a terminal or notebook, e.g. ``{'loss': '0.01', 'grad_norm': '0.22', 'reward': '0.125', 'epoch': '0.0005'}``
(newer transformers prints values as strings, older ones as numbers; ``nan`` / ``inf`` are read, text is left out).

The text is split on ``\\r`` and ``\\n`` (tqdm bars), and only a segment that is a whole dict literal with
training-log keys counts (parsed with :func:`ast.literal_eval`, never evaluated): a dict inside a longer line is
ignored. Dicts with ``eval_`` keys keep their names, at the step of the last training dict; the end-of-training summary
(``train_runtime``, ...) goes under ``summary/``. The Trainer header (``Num update steps per epoch = 1,869``, ``Total
optimization steps = 200``, ...) is read when present, into ``frame.meta``.

The dicts rarely carry a step (and stdout is often block-buffered, so a bar's position says nothing). It comes from, in
this order: a ``step`` key; ``epoch`` x the header's update steps per epoch, when the printed epochs are precise to a
quarter step; the order x ``logging_steps`` (the reader option, ``--logging-steps``); the order x the header's total
steps over the number of dicts, when epoch x steps per epoch agrees (or, lacking those, the run printed its summary: a
run cut short fits other divisors too); else the order, one step each. Each candidate must give unique ascending steps,
else the next is tried; ``frame.meta["step_source"]`` says which was used and why.
"""

from __future__ import annotations

import ast
import math
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import NoStepAxis, Reader, reader
from rlscope.analysis.readers.verl_log import ANSI, STEP_LINE
from rlscope.errors import UsageError

TRAIN_KEYS = ("loss", "grad_norm", "learning_rate", "reward", "epoch")
SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second")
HEADER = {"num_examples": "Num examples", "num_epochs": "Num Epochs",
          "update_steps_per_epoch": "Num update steps per epoch",
          "total_train_batch_size": "Total train batch size (w. parallel, distributed & accumulation)",
          "gradient_accumulation_steps": "Gradient Accumulation steps", "total_steps": "Total optimization steps",
          "resumed_from_step": "Continuing training from global step"}
HEADER_LINE = re.compile("(" + "|".join(re.escape(v) for v in HEADER.values()) + r")\s*=?\s*(\d[\d,]*)")
SEGMENTS = re.compile(r"[\r\n]+")


def value_of(node: ast.expr):
    """A dict value's python value (a bare ``nan`` / ``inf`` / ``-inf``, as ``str()`` of a float dict prints them,
    as its text), or None."""
    sign = ""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Name):
        sign, node = "-", node.operand
    if isinstance(node, ast.Name):
        return sign + node.id if node.id in ("nan", "inf") else None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def parse_dict(segment: str) -> dict | None:
    """A training-log dict from one segment (a whole ``{...}`` literal with training-log keys) as key -> (value, its
    text), else None. Values: numbers or numeric strings (``'1e-05'``, ``'nan'``); text and the rest are dropped."""
    text = ANSI.sub("", segment).strip()
    if not (text.startswith("{") and text.endswith("}")) or len(text) > 100_000:
        return None
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(node, ast.Dict):
        return None
    out: dict[str, tuple[float, str]] = {}
    for k, v in zip(node.keys, node.values):
        key = value_of(k) if k is not None else None
        if not isinstance(key, str):
            return None
        value = value_of(v)
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        try:
            out[key] = (float(value), f"'{value.strip()}'" if isinstance(value, str) else repr(value))
        except ValueError:
            continue  # text
    if any(k in out for k in TRAIN_KEYS + SUMMARY_KEYS) or any(k.startswith("eval_") for k in out):
        return out
    return None


def kind(d: dict) -> str:
    if any(k in d for k in SUMMARY_KEYS):
        return "summary"
    return "eval" if any(k.startswith("eval_") for k in d) else "train"


def resolution(value: float, text: str) -> float:
    """How far the true value may be from a printed one: half its last printed digit (``'0.01'`` -> 0.005), and at
    least half a hundredth for a number (older transformers rounded the epoch to 2 decimals: ``0.1`` was 0.10); a
    string holds ``f"{v:.4g}"`` (newer transformers), so it is also within half its 4th significant digit (``'0.107'``
    was 0.1070 with the zero dropped)."""
    try:
        exponent = Decimal(text.strip("'")).as_tuple().exponent
    except InvalidOperation:
        return float("inf")
    if not isinstance(exponent, int):
        return float("inf")
    res = 0.5 * 10.0 ** (exponent if text.startswith("'") else min(exponent, -2))
    if text.startswith("'") and math.isfinite(value) and value != 0:
        res = min(res, 0.5 * 10.0 ** (math.floor(math.log10(abs(value))) - 3))
    return res


def ascending(steps: list[int]) -> bool:
    return all(b > a for a, b in zip(steps, steps[1:]))


def fits_epochs(steps: list[int], epochs: list[tuple[float, str]] | None, per_epoch: int | None) -> bool:
    """Whether candidate steps agree with the printed epochs (x steps per epoch, or proportional when unknown)."""
    if epochs is None or not steps:
        return True
    scale = per_epoch or (steps[-1] / epochs[-1][0] if epochs[-1][0] > 0 else None)
    if scale is None:
        return True
    return all(abs(e * scale - s) <= resolution(e, t) * scale + 0.5 + 1e-3 * s for s, (e, t) in zip(steps, epochs))


def by_order(n: int, every: int, start: int = 0, first: bool = False) -> list[int]:
    """Steps of ``n`` dicts logged every ``every`` steps after ``start`` (``first``: and at step ``start + 1``)."""
    return ([start + 1] if first else []) + [start + every * (i + 1) for i in range(n - first)]


def infer_steps(train: list[dict], header: dict, logging_steps: int | None, finished: bool) -> tuple[list[int], str]:
    """The train dicts' steps, unique and ascending, and what they came from (see the module docstring)."""
    n, start, notes = len(train), header.get("resumed_from_step", 0), ""
    epochs = [d["epoch"] for d in train] if all("epoch" in d for d in train) else None
    per_epoch = header.get("update_steps_per_epoch")
    if all("step" in d for d in train):
        steps = [int(d["step"][0]) for d in train]
        if ascending(steps):
            return steps, "the dicts' 'step' key"
        notes += "; the dicts' 'step' key repeats or goes back"
    if epochs and per_epoch and max(resolution(e, t) for e, t in epochs) * per_epoch <= 0.25:
        steps = [round(e * per_epoch) for e, _ in epochs]
        if ascending(steps):
            return steps, f"epoch x {per_epoch} update steps per epoch from the Trainer header"
        notes += f"; epoch x {per_epoch} update steps per epoch repeats a step"
    if logging_steps:
        for first in (False, True):
            steps = by_order(n, logging_steps, start, first)
            if fits_epochs(steps, epochs, per_epoch):
                return steps, f"order x logging_steps {logging_steps} as given" + \
                    (", the first dict at step 1 (logging_first_step)" if first else "") + notes
        return by_order(n, logging_steps, start), f"order x logging_steps {logging_steps} as given (the printed " \
                                                  f"epochs disagree){notes}"
    total = header.get("total_steps")
    if total and total > start and (per_epoch and epochs or finished):  # a run cut short fits other divisors too
        span = total - start
        for first, k in ((False, n), (True, n - 1)):
            if k > 0 and span % k == 0 and (span // k > 1 or not first):
                steps = by_order(n, span // k, start, first)
                if fits_epochs(steps, epochs, per_epoch):
                    return steps, f"order x logging_steps {span // k}: {n} dicts over the header's {total} total " \
                                  f"optimization steps" + (", the first at step 1 (logging_first_step)" if first
                                                           else "") + notes
    return by_order(n, 1, start), "order (logging_steps assumed 1; pass --logging-steps N if the run logged every " \
                                  f"N steps){notes}"


@reader
class TrlConsoleReader(Reader):
    name = "trl_console"
    describe = "transformers/TRL Trainer console output (the printed {'loss': ..., 'epoch': ...} dict per logging step)"

    def detect(self, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".wandb"):
            return False
        size, chunk = path.stat().st_size, 1 << 20
        with open(path, "rb") as f:  # the head and the tail: block-buffered stdout prints every dict at the end
            text = f.read(chunk)
            if size > chunk:
                f.seek(max(chunk, size - chunk))
                text += b"\n" + f.read(chunk)
        segments = SEGMENTS.split(text.decode("utf-8", "replace"))
        dicts = sum(1 for s in segments if "{" in s and parse_dict(s) is not None)
        # a verl log with a stray metric-like dict stays verl's; a TRL log with a stray 'step:N - ' line is ours
        return dicts > 0 and dicts >= sum(1 for s in segments if "step:" in s and STEP_LINE.search(ANSI.sub("", s)))

    def read(self, path: Path, logging_steps: int | None = None) -> RunFrame:
        if logging_steps is not None and logging_steps < 1:
            raise UsageError(f"--logging-steps must be a positive number of steps, not {logging_steps}")
        records, header, section = [], {}, ""  # (kind, dict) in print order; the Trainer header's numbers
        with open(path, encoding="utf-8", errors="replace") as f:  # universal newlines: a '\r' ends a line too
            for line in f:
                d = parse_dict(line) if "{" in line else None
                if d is not None:
                    records.append((kind(d), d))
                elif "***** Running" in line:  # the header's 'Num examples = ' also heads an evaluation
                    section = line
                elif ("=" in line or "global step" in line) and (not section or "Running training" in section):
                    for m in HEADER_LINE.finditer(line):
                        key = next(k for k, v in HEADER.items() if v == m.group(1))
                        header.setdefault(key, int(m.group(2).replace(",", "")))
        train = [d for k, d in records if k == "train"]
        if not train:
            raise NoStepAxis(f"{path}: no training dict (a line that is a printed {{'loss': ..., 'epoch': ...}} dict "
                             f"of the transformers/TRL Trainer)")
        finished = any(k == "summary" for k, _ in records)
        steps, source = infer_steps(train, header, logging_steps, finished)
        if logging_steps and "logging_steps" not in source:
            source += f" (logging_steps {logging_steps} was not needed)"
        all_steps, names, values = [], [], []
        train_steps, step = iter(steps), header.get("resumed_from_step", 0)
        for k, d in records:
            if k == "train":
                step = next(train_steps)
            for key, (value, _) in d.items():
                if key != "step":
                    all_steps.append(step), names.append(f"summary/{key}" if k == "summary" else key)
                    values.append(value)
        meta = {"framework": "transformers/TRL (console)", "step_source": source, **header, "train_dicts": len(train),
                "eval_dicts": sum(k == "eval" for k, _ in records), "finished": finished}
        return RunFrame.from_long(str(path), self.name, all_steps, names, values, meta=meta)
