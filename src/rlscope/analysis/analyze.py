"""``rlscope analyze``: read a run (any supported format), run every registered analysis, write and show the results.

The results of one run are one JSON object: ``{"source", "format", "steps", "rl_steps", "phases", "analyses": {name:
{"status", "verdict", "reason", ...numbers}}}``. For an rlscope run directory it goes to ``<run>/analysis/
analysis.json``; for another framework's log to ``<out>/analysis.json`` when an output directory is given.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlscope.analysis.analyses import ANALYSES, run_all
from rlscope.analysis.frame import RunFrame
from rlscope.analysis.readers import read_run


SCHEMA = 2  # the layout of analysis.json; a reader of a saved result with another schema recomputes it


def code_fingerprint() -> str:
    """A hash of the analysis code (the analyses, their statistics, the frame): a saved result from other code is
    recomputed rather than shown (``rlscope report``)."""
    import hashlib

    root = Path(__file__).parent
    h = hashlib.sha1()
    for path in sorted([*root.glob("analyses/*.py"), root / "stats.py", root / "frame.py", root / "aliases.py"]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def analyze_frame(frame: RunFrame, names=None, options: dict | None = None) -> dict:
    """Every registered analysis (or ``names``) of a frame, as the JSON-ready result object."""
    t0 = time.perf_counter()
    results, timings = {}, {}
    for name in names or ANALYSES.names():
        t = time.perf_counter()
        results[name] = run_all(frame, [name], options)[name]
        timings[name] = round(time.perf_counter() - t, 3)
    return {"schema": SCHEMA, "code": code_fingerprint(), "source": frame.source, "format": frame.format, "steps": frame.steps,
            "last_step": frame.last_step, "rl_steps": int(len(frame.rl_steps)),
            "phases": frame.phases or None, "meta": frame.meta,
            "analyses": {n: r.to_json() for n, r in results.items()}, "seconds": round(time.perf_counter() - t0, 3),
            "timings": timings}


def analyze(path, fmt: str | None = None, out=None, names=None, options: dict | None = None,
            salvage: bool = False, logging_steps: int | None = None) -> dict:
    """Read ``path`` and analyse it; the result is written to ``analysis.json`` (see the module docstring). With
    ``names`` (a subset) the run's own ``analysis/analysis.json`` is left alone: only an ``out`` gets the subset.
    ``salvage``, ``logging_steps``: as for :func:`~rlscope.analysis.readers.read_run`."""
    from rlscope.registry import check_names

    if names is not None:
        check_names("analysis", names, ANALYSES.names(), plural="analyses")
    t0 = time.perf_counter()
    frame = read_run(path, fmt, salvage=salvage, logging_steps=logging_steps)
    read_seconds = time.perf_counter() - t0
    result = analyze_frame(frame, names, options)
    result["read_seconds"] = round(read_seconds, 3)
    target = Path(out) if out is not None else (Path(path) / "analysis" if frame.format == "rlscope" and names is None
                                                else None)
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        from rlscope.store import atomic_write

        atomic_write(target / "analysis.json", json.dumps(result, indent=2, default=str))
        result["written_to"] = str(target / "analysis.json")
    return result


KEY_NUMBERS = {
    "two_stage": ("pattern", "break_step"),
    "aha": ("step", "jump"),
    "entropy_law": ("r2", "ceiling", "forecast_rmse"),
    "ceiling": ("asymptote", "forecast_error"),
    "entropy_dynamics": ("change", "steps_to_floor"),
    "health": ("severity",),
    "boundary": ("crossover_k", "gained", "lost"),
    "weight_dynamics": ("rotation_to_scaling", "direction_stability"),
    "planning_tokens": ("planning_share_end", "semantic_entropy_end"),
}


def print_table(result: dict, console=None) -> None:
    """The verdicts of one run as a rich table on the terminal."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from rlscope.safe_text import terminal_safe

    def safe(text) -> str:  # verdicts can quote model text (e.g. planning_tokens' grams)
        return escape(terminal_safe(text))

    console = console or Console()
    table = Table(title=safe(f"rlscope analyze: {Path(result['source']).name} ({result['format']}, "
                             f"{result['steps']} steps)"),
                  show_lines=True, expand=True)
    table.add_column("analysis", style="bold", no_wrap=True)
    table.add_column("verdict", ratio=5)
    table.add_column("key numbers", ratio=2)
    for name, r in result["analyses"].items():
        keys = KEY_NUMBERS.get(name, ())
        nums = ", ".join(f"{k} {_fmt(r.get(k))}" for k in keys if r.get(k) is not None)
        style = "dim" if r["status"] == "skipped" else None
        table.add_row(safe(name), safe(r["verdict"]), safe(nums), style=style)
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


__all__ = ["ANALYSES", "analyze", "analyze_frame", "print_table"]
