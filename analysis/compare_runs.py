"""Compare one metric across run directories, e.g. entropy under plain DAPO, Clip-Cov and KL-Cov:

    python analysis/compare_runs.py runs/tiny-dapo runs/tiny-dapo-clipcov runs/tiny-dapo-klcov \
        --metric rlscope/entropy/mean

Prints one row per run (first, last, mean of the last 10 steps) and, last, the same as JSON.
"""

import argparse
import json

from rlscope.analysis.compare import summarize


def main(argv=None):
    ap = argparse.ArgumentParser(description="compare a metric across rlscope runs")
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--metric", default="rlscope/entropy/mean")
    ap.add_argument("--tail", type=int, default=10)
    ns = ap.parse_args(argv)
    rows = summarize(ns.runs, ns.metric, ns.tail)
    for r in rows:
        print(f"{r['run']:>28}  steps {r['steps'][0]}-{r['steps'][1]}  first {r['first']:.4f}  last {r['last']:.4f}  "
              f"mean(last {ns.tail}) {r[f'mean_last_{ns.tail}']:.4f}")
    print(json.dumps(rows))
    return rows


if __name__ == "__main__":
    main()
