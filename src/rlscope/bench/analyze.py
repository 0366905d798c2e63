"""``rlscope bench analyze``: ``rlscope analyze`` end to end on a large synthetic run, and on a small verl log in a
fresh process."""

from __future__ import annotations

import tempfile
import time


def bench_analyze(steps: int = 20000, metrics: int = 200, rollout_every: int = 10, completions: int = 64,
                  probe_every: int = 100) -> dict:
    """``rlscope analyze`` end to end on a synthetic rlscope run (``steps`` x ``metrics`` metric records, rollouts every
    ``rollout_every`` steps with ``completions`` each, pass@k and per-matrix weight rows every ``probe_every`` steps;
    written with the real run writer, then flushed to disk): seconds (reading and analysing; the one-off imports are
    timed apart) of the first analysis right after writing and the median of three more (page cache warm: what is
    left is parsing and computing, not this machine's disk), peak resident memory, whether the planted answers were
    found."""
    import statistics
    import os
    import resource

    t0 = time.perf_counter()
    from rlscope.analysis.analyses import ANALYSES  # the one-off imports of a fresh process, timed apart
    from rlscope.analysis.analyze import analyze
    from rlscope.analysis.readers import READERS
    from rlscope.analysis.synthetic import expected_aha, expected_break, write_synthetic_run

    ANALYSES.names(), READERS.names()
    imports = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_synthetic_run(tmp, steps, metrics, rollout_every, completions, probe_every)
        os.sync()
        written = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp) if f.endswith(".jsonl"))
        runs = []
        for _ in range(4):
            t0 = time.perf_counter()
            result = analyze(tmp)
            runs.append(time.perf_counter() - t0)
    seconds = statistics.median(runs[1:])
    small = small_log_seconds()
    a = result["analyses"]
    found = {"two_stage_break": a["two_stage"]["break_step"], "expected_break": expected_break(steps),
             "aha_step": a["aha"]["step"], "expected_aha": expected_aha(steps),
             "crossover_k": a["boundary"]["crossover_k"], "health": a["health"]["severity"]}
    return {"bench": "analyze", "steps": steps, "metrics": metrics, "metric_records": steps * metrics,
            "rollouts": (steps // rollout_every) * completions, "store_mib": round(size / 2 ** 20, 1),
            "write_seconds": round(written, 1), "import_seconds": round(imports, 2),
            "first_seconds": round(runs[0], 2), "runs_seconds": [round(r, 2) for r in runs[1:]],
            "read_seconds": result["read_seconds"], "analyses_seconds": result["seconds"],
            "seconds": round(seconds, 2), "goal_seconds": 5.0,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),
            "timings": result["timings"], "planted": found, **small}


def small_log_seconds(steps: int = 100, repeats: int = 3) -> dict:
    """Wall seconds of ``rlscope analyze`` on a ``steps``-step verl console log in a fresh process, imports included
    (what a user waits for on someone else's log): the median of ``repeats`` runs."""
    import os
    import shutil
    import statistics
    import subprocess
    import sys

    from rlscope.analysis.synthetic import write_small_log

    script = shutil.which("rlscope", path=os.path.dirname(sys.executable))
    command = [script] if script else [sys.executable, "-m", "rlscope.cli"]
    with tempfile.TemporaryDirectory() as tmp:
        log = write_small_log(os.path.join(tmp, "verl_console.log"), steps)
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run([*command, "analyze", str(log)], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    return {"small_log_steps": steps, "small_log_seconds": round(statistics.median(walls), 2),
            "small_log_runs": [round(w, 2) for w in walls], "small_log_goal_seconds": 1.0}
