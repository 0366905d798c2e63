"""``rlscope report RUN [RUN ...]``: one self-contained HTML page answering the survey's questions about a run, or
several runs side by side (compare mode).

The page is built from the analysis results (``rlscope analyze``; reused from ``<run>/analysis/analysis.json`` when
it is newer than the run's metrics and was written by the same analysis code, else computed) and the run's logged
series; figures are registered in :mod:`rlscope.report.figures` and only draw saved numbers. The Vega/Vega-Lite runtime comes inline from
``vl-convert-python``'s bundle, so the file opens from disk with no network.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlscope.analysis.frame import RunFrame


@dataclass
class ReportRun:
    label: str
    frame: RunFrame
    result: dict
    token_text: dict = field(default_factory=dict)  # (step, i) -> [(token, entropy)]: dumped per-token entropies


def load_run(path, fmt: str | None = None, label: str | None = None, salvage: bool = False,
             logging_steps: int | None = None) -> ReportRun:
    """Read a run and its analysis (saved when fresh, else computed and, for an rlscope run, saved)."""
    from rlscope.analysis.analyze import analyze_frame
    from rlscope.analysis.readers import read_run

    path = Path(path)
    t0 = time.perf_counter()
    frame = read_run(path, fmt, salvage=salvage, logging_steps=logging_steps)
    saved = path / "analysis" / "analysis.json" if path.is_dir() else None
    metrics = path / "metrics.jsonl" if path.is_dir() else None
    result = None
    if saved is not None and saved.exists() and metrics is not None and metrics.exists() \
            and saved.stat().st_mtime >= metrics.stat().st_mtime:
        try:
            result = json.loads(saved.read_text())
        except ValueError:  # damaged: recompute (and rewrite) it
            result = {}
        from rlscope.analysis.analyze import SCHEMA, code_fingerprint

        if result.get("schema") != SCHEMA or result.get("code") != code_fingerprint() or frame.meta.get("skipped"):
            result = None  # written by other analysis code: recompute
    if result is None:
        result = analyze_frame(frame)
        result["read_seconds"] = round(time.perf_counter() - t0, 3)
        if frame.format == "rlscope":
            saved.parent.mkdir(parents=True, exist_ok=True)
            from rlscope.store import atomic_write

            atomic_write(saved, json.dumps(result, indent=2, default=str))
    name = label or (path.name if path.name not in ("", ".") else str(path))
    return ReportRun(name, frame, result, token_views(path) if path.is_dir() else {})


def token_views(run_dir: Path, steps: int = 12, rows: int = 4) -> dict:
    """Completions of the dumped steps (``<run>/tokens/step*-rank0.pt``) as (token text, entropy) pairs, decoded with
    the run's tokenizer; empty when the run dumped nothing or has no tokenizer file."""
    dumps = sorted((run_dir / "tokens").glob("step*-rank0.pt"))
    tok_file = next(iter(sorted(run_dir.glob("models/*/tokenizer.json"))), None)
    if not dumps or tok_file is None:
        return {}
    import torch
    from tokenizers import Tokenizer

    from rlscope.analysis.stats import even_indices

    tok = Tokenizer.from_file(str(tok_file))
    out = {}
    for path in [dumps[i] for i in even_indices(len(dumps), steps)]:
        data = torch.load(path, weights_only=True)
        if "completion_ids" not in data or "entropies" not in data or "mask" not in data:
            continue
        step = int(path.name[4:10])
        for i in range(min(rows, data["completion_ids"].shape[0])):
            keep = data["mask"][i].bool()
            ids, ents = data["completion_ids"][i][keep].tolist(), data["entropies"][i][keep].tolist()
            out[(step, i)] = {"tokens": [(tok.decode([t], skip_special_tokens=False), float(h))
                                         for t, h in zip(ids, ents)],
                              "reward": _item(data.get("rewards"), i), "advantage": _item(data.get("advantages"), i)}
    return out


def _item(t, i):
    return None if t is None or t.dim() == 0 or i >= t.shape[0] else float(t[i])


def build_report(paths, out=None, fmt: str | None = None, labels=None, keep_specs: bool = False,
                 salvage: bool = False, logging_steps: int | None = None) -> dict:
    """Write the report of one run (or the compare page of several); returns {path, bytes, seconds, figures, ...}
    (``keep_specs``: and each drawn figure's Vega-Lite spec under ``specs``, e.g. to render it for W&B)."""
    import altair  # noqa: F401  (the figures' library; imported here so a missing install fails before any work)
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    from rlscope import __version__
    from rlscope.report.figures import FIGURES, ORDER, NotDrawn
    from rlscope.report.page import render

    t0 = time.perf_counter()
    paths = [Path(p) for p in paths]
    labels = labels or [None] * len(paths)
    runs = [load_run(p, fmt, lab, salvage=salvage, logging_steps=logging_steps) for p, lab in zip(paths, labels)]
    if len({r.label for r in runs}) < len(runs):
        for i, r in enumerate(runs):
            r.label = f"{i + 1}: {r.label}"
    figures = []
    for name in ORDER:
        fig = FIGURES.get(name)
        try:
            figures.append((name, fig.title, fig.question, fig.draw(runs).to_dict(), None))
        except NotDrawn as e:
            figures.append((name, fig.title, fig.question, None, str(e)))
    bundle = vlc.javascript_bundle(vl_version=vl_version_for_vl_convert())
    title = ("rlscope report: " + runs[0].label) if len(runs) == 1 else \
        f"rlscope compare: {', '.join(r.label for r in runs)}"
    page = render(runs, figures, bundle, title, {"version": __version__, "created": time.strftime("%Y-%m-%d %H:%M")})
    if out is None:
        out = paths[0] / "analysis" / "report.html" if len(paths) == 1 and runs[0].frame.format == "rlscope" \
            else Path("report.html")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from rlscope.store import atomic_write

    atomic_write(out, page)
    drawn = [f[0] for f in figures if f[3] is not None]
    info = {"report": str(out), "bytes": out.stat().st_size, "seconds": round(time.perf_counter() - t0, 2),
            "runs": [r.label for r in runs], "figures": drawn,
            "not_drawn": {f[0]: f[4] for f in figures if f[3] is None}}
    if keep_specs:
        info["specs"] = {f[0]: f[3] for f in figures if f[3] is not None}
    return info
