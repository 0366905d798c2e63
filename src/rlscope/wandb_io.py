"""rlscope's W&B run: opening it (online with credentials, offline otherwise) and writing the analysis into it.

* :func:`open_run`: a recipe opens its W&B run itself, before the SFT warm start, so both phases land in one run on
  rlscope's step axis (``train/rlscope/step``); the trainer's W&B callback finds the open run and logs into it.
* :func:`publish_analysis`: the results of ``rlscope analyze`` into a W&B run -- every verdict and number in the run
  summary as ``rlscope/analysis/<analysis>/<stat>`` (an interval as ``<stat>_lo`` / ``<stat>_hi``), the verdicts as a
  W&B Table, each report figure as an image (``rlscope/analysis/figure/<name>``, rendered from the report's
  Vega-Lite spec), the whole report as an HTML panel (``rlscope/analysis/report``), and report + analysis.json as an
  artifact of type ``rlscope-analysis``.
* :func:`find_run`: which W&B run a finished run logged to (``meta.json``, else its offline/online run directories),
  for ``rlscope analyze --wandb``, which resumes that run to write into it.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from rlscope.callbacks.publish import STEP_KEY
from rlscope.errors import UsageError

PREFIX = "rlscope/analysis"
RUN_DIR_RE = re.compile(r"^(offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)(-\d+)?$")


_FALLBACK: dict[str, str] = {}  # run id -> why an online run opened offline


def has_credentials() -> bool:
    """An API key in ``WANDB_API_KEY`` or in ``~/.netrc`` for W&B's host (``wandb login`` writes it there)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def mode() -> str:
    """``WANDB_MODE`` when set; else online with credentials, offline without (files under the run directory)."""
    return os.environ.get("WANDB_MODE") or ("online" if has_credentials() else "offline")


def open_run(run_dir, name: str, config: dict | None = None, run_id: str | None = None,
             project: str | None = None, entity: str | None = None):
    """Start (or, with ``run_id``, resume) a W&B run whose files go under ``run_dir/wandb``.

    Online, W&B may be unreachable (no network, a firewall, an outage): after ``RLSCOPE_WANDB_INIT_TIMEOUT`` seconds
    (default 60) the run opens offline instead -- training goes on, the files are under ``run_dir/wandb`` and ``wandb
    sync`` uploads them later; :func:`run_info` records why (``fallback``)."""
    import logging

    import wandb

    if wandb.run is not None and (run_id is None or wandb.run.id != run_id):
        wandb.finish()  # one rlscope run, one W&B run: a run left open in this process would take our logs
    kwargs = dict(project=project or os.environ.get("WANDB_PROJECT", "rlscope"), entity=entity, name=name,
                  dir=str(run_dir), config=config, id=run_id, resume="allow" if run_id else None)
    wanted = mode()
    if wanted != "online":
        return wandb.init(**kwargs, mode=wanted, settings=wandb.Settings(silent=True))
    timeout = float(os.environ.get("RLSCOPE_WANDB_INIT_TIMEOUT", "60"))
    try:
        return wandb.init(**kwargs, mode="online", settings=wandb.Settings(silent=True, init_timeout=timeout))
    except Exception as exc:  # noqa: BLE001 -- CommError, timeouts, auth errors: never the end of a training run
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        logging.getLogger("rlscope").warning("rlscope: W&B online failed (%s); logging offline under %s/wandb -- "
                                             "`wandb sync` uploads it later", reason, run_dir)
        if wandb.run is not None:
            wandb.finish()
        wandb.teardown()
        run = wandb.init(**kwargs, mode="offline", settings=wandb.Settings(silent=True))
        _FALLBACK[run.id] = reason
        return run


def close(run) -> None:
    """Finish ``run`` and wait until its files are written. ``run.finish()`` alone returns while W&B's service process
    may still be writing the run file: of 30 offline runs read right after ``finish()``, one was torn (119 of its 130
    records; whole 2 s later). Tearing the service down waits for it, so ``wandb sync`` and ``rlscope analyze`` read the
    run whole. rlscope holds one W&B run per process, so nothing else is using the service."""
    import wandb

    run.finish()
    wandb.teardown()


def run_info(run) -> dict:
    """What ``meta.json`` keeps of a W&B run, so the analysis can find it again."""
    info = {"id": run.id, "project": run.project, "entity": getattr(run, "entity", None) or None,
            "mode": "offline" if run.settings._offline else "online", "dir": str(Path(run.dir).parent)}
    if run.id in _FALLBACK:
        info["fallback"] = f"online was asked for but W&B was unreachable ({_FALLBACK[run.id]})"
    return info


def find_run(path) -> dict | None:
    """The W&B run of a run directory or W&B path: ``{"id", "project", "entity", "root"}`` (``root``: the directory
    whose ``wandb/`` holds its files, None for an online address), or None when it logged to none.

    Order: ``meta.json``'s ``wandb`` entry; else the latest ``wandb/(offline-)run-*`` directory (project and entity
    read from its run record); else a ``wandb://ENTITY/PROJECT/ID`` address or an offline run file/directory itself.
    """
    text = str(path)
    if text.startswith("wandb://"):
        parts = text[len("wandb://"):].split("/")
        if len(parts) != 3:
            raise ValueError(f"{path}: a W&B run is wandb://ENTITY/PROJECT/RUN_ID")
        return {"id": parts[2], "project": parts[1], "entity": parts[0], "root": None}
    path = Path(path)
    meta = path / "meta.json"
    if meta.is_file():
        import json

        info = json.loads(meta.read_text()).get("wandb")
        if info:
            return {**info, "root": str(path)}
    from rlscope.analysis.readers.wandb_run import run_files, run_record

    files = run_files(path)
    if not files:
        return None
    record = run_record(files[0])
    return {"id": record.get("run_id") or _id_from_dir(files[0].parent), "project": record.get("project") or None,
            "entity": record.get("entity") or None, "root": str(files[0].parent.parent.parent)}


def _id_from_dir(d: Path) -> str | None:
    m = RUN_DIR_RE.match(d.name)
    return m.group("id") if m else None


def summary_items(result: dict) -> dict:
    """The analysis results as flat W&B summary items: ``rlscope/analysis/<analysis>/<stat>`` for every number, flag
    and short text (status, verdict, reason, pattern...); a two-number interval as ``<stat>_lo`` and ``<stat>_hi``.
    Series and nested tables (fit knots, points, timelines) stay in the report and the artifact."""
    out = {}
    for name, r in result.get("analyses", {}).items():
        for key, value in r.items():
            full = f"{PREFIX}/{name}/{key}"
            if isinstance(value, (bool, str)):
                out[full] = value
            elif isinstance(value, (int, float)):
                if math.isfinite(value):
                    out[full] = value
            elif isinstance(value, (list, tuple)) and len(value) == 2 and key.endswith("_ci") and \
                    all(isinstance(v, (int, float)) and math.isfinite(v) for v in value):
                out[f"{full[:-3]}_lo"], out[f"{full[:-3]}_hi"] = float(value[0]), float(value[1])
    return out


def figure_pngs(specs: dict, out_dir) -> dict[str, Path]:
    """Each report figure (a Vega-Lite spec) as a PNG under ``out_dir`` (rendered by vl-convert, no browser)."""
    import vl_convert as vlc
    from altair.utils._importers import vl_version_for_vl_convert

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    version, paths = vl_version_for_vl_convert(), {}
    for name, spec in specs.items():
        path = out_dir / f"{name}.png"
        path.write_bytes(vlc.vegalite_to_png(spec, vl_version=version, scale=1.5))
        paths[name] = path
    return paths


def publish_analysis(run, result: dict, report: dict | None = None, step: int | None = None) -> dict:
    """Write one run's analysis into the open W&B ``run`` (see the module docstring); ``report``: what
    :func:`rlscope.report.build_report` returned with ``keep_specs=True``. Returns what was written, by kind."""
    import wandb

    from rlscope.analysis.analyze import KEY_NUMBERS

    summary = summary_items(result)
    summary[f"{PREFIX}/steps"] = result.get("steps")
    run.summary.update(summary)
    rows = []
    for name, r in result.get("analyses", {}).items():
        nums = ", ".join(f"{k} {r[k]:.4g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                         for k in KEY_NUMBERS.get(name, ()) if r.get(k) is not None)
        rows.append([name, r.get("status"), r.get("verdict") or "", nums])
    payload = {f"{PREFIX}/verdicts": wandb.Table(columns=["analysis", "status", "verdict", "key numbers"], data=rows)}
    images = {}
    if report is not None:
        report_path = Path(report["report"])
        images = figure_pngs(report.get("specs", {}), report_path.parent / "figures")
        for name, path in images.items():
            payload[f"{PREFIX}/figure/{name}"] = wandb.Image(str(path), caption=name)
        payload[f"{PREFIX}/report"] = wandb.Html(report_path.read_text(encoding="utf-8"), inject=False)
    if step is not None:
        payload[STEP_KEY] = step
    run.log(payload)
    artifact = None
    if report is not None:
        artifact = wandb.Artifact(f"rlscope-analysis-{run.id}", type="rlscope-analysis",
                                  description="rlscope's analysis of this run: the HTML report and analysis.json",
                                  metadata={n: r.get("verdict") for n, r in result.get("analyses", {}).items()})
        artifact.add_file(str(report_path), name="report.html")
        saved = result.get("written_to")
        if saved and Path(saved).exists():
            artifact.add_file(saved, name="analysis.json")
        run.log_artifact(artifact)
    return {"summary": len(summary), "figures": sorted(images), "artifact": artifact.name if artifact else None,
            **run_info(run)}


def require_run(path) -> dict:
    """:func:`find_run`, or one message naming what ``--wandb`` needs."""
    info = find_run(path)
    if info is None or not info.get("id"):
        raise UsageError(f"rlscope analyze --wandb: {path} did not log to W&B (no meta.json 'wandb' entry and no "
                         f"wandb/ run directory). Give an rlscope run trained with report_to wandb, a W&B offline "
                         f"run directory, or wandb://ENTITY/PROJECT/RUN_ID")
    return info


def analyze_into_wandb(path, result: dict, report: dict, info: dict | None = None) -> dict:
    """``rlscope analyze --wandb``: resume the W&B run ``path`` logged to (``info``: :func:`require_run`'s answer,
    when already asked) and write the analysis into it (offline, a new session directory beside the run's:
    ``wandb sync`` uploads both into the one run)."""
    info = info or require_run(path)
    root = info.get("root") or str(Path(report["report"]).parent)
    run = open_run(root, name=None, run_id=info["id"], project=info.get("project"), entity=info.get("entity"))
    try:
        written = publish_analysis(run, result, report, step=result.get("last_step"))
    finally:
        close(run)
    return written
