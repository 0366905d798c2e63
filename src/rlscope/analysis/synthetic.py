"""A synthetic rlscope run with planted dynamics, written with the real :class:`~rlscope.store.RunWriter`: for the
``rlscope bench analyze`` benchmark and the CLI's tests (a run whose answers are known without training a model).

Planted: entropy decays exponentially; training accuracy follows the entropy law R = b - a e^H (a = 0.3, b = 1.1);
response length shrinks until 40% of the run, then grows (two stages); held-out accuracy jumps at 60% of the run
(an aha step), with reflection words rising just before it; pass@k improves at small k while the base keeps more
coverage at large k (a crossover); the weights rotate with a stable, linearly growing rank-1 update; successful
rollouts carry a strategic phrase. The rest of the ``metrics`` are noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from rlscope.probes.passk import pass_at_k_curve
from rlscope.store import RunWriter


def write_synthetic_run(run_dir, steps: int = 2000, metrics: int = 60, rollout_every: int = 10,
                        completions: int = 64, probe_every: int = 100, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    run_dir = Path(run_dir)
    w = RunWriter(run_dir)
    w.write_meta({"task": "synthetic", "world_size": 1, "status": "finished", "phases": {"rl": [1, steps]}})
    x = np.arange(1, steps + 1)
    frac = x / steps
    entropy = 0.9 * np.exp(-3 * frac) + 0.05 + rng.normal(0, 0.01, steps)
    acc = np.clip(1.1 - 0.3 * np.exp(entropy) + rng.normal(0, 0.02, steps), 0, 1)
    brk = 0.4 * steps
    length = 200 - 60 * np.minimum(x, brk) / brk + 80 * np.maximum(0, x - brk) / steps + rng.normal(0, 3, steps)
    heldout = 0.3 + 0.25 * (frac >= 0.6) + 0.05 * frac
    reflection = 0.05 + 0.6 * (frac >= 0.58) + rng.normal(0, 0.03, steps)
    planted = {"rlscope/entropy/mean": entropy, "entropy": entropy, "rewards/task_correct/mean": acc, "reward": acc,
               "rlscope/behavior/length_mean": length, "completions/mean_length": length,
               "rlscope/behavior/reflection_rate": reflection, "frac_reward_zero_std": 0.2 + 0.1 * frac,
               "kl": 0.002 * frac, "clip_ratio/region_mean": 0.01 + 0 * frac, "grad_norm": 1 + rng.normal(0, 0.05, steps),
               "completions/clipped_ratio": 0.01 + 0 * frac, "rlscope/cov/mean": 0.01 + rng.normal(0, 0.002, steps)}
    names = list(planted) + [f"noise/metric_{i}" for i in range(max(0, metrics - len(planted)))]
    noise = rng.normal(0, 1, (len(names) - len(planted), steps))
    for i in range(steps):
        values = {n: float(v[i]) for n, v in planted.items()}
        values.update({n: float(noise[j, i]) for j, n in enumerate(names[len(planted):])})
        w.log_metrics(int(x[i]), values)
    for s in range(0, steps + 1, probe_every):  # held-out and pass@k, weight geometry
        if s:
            w.log_metrics(s, {"eval_rewards/task_correct/mean": float(heldout[s - 1] + rng.normal(0, 0.01))})
        n, prompts = 16, 64
        p = np.clip(rng.beta(2, 5, prompts) + (0.3 * s / steps) * (rng.random(prompts) < 0.8), 0, 1)
        counts = rng.binomial(n, p).tolist()
        if s:  # RL sharpens: some prompts lose all their correct samples
            counts = [0 if rng.random() < 0.1 * s / steps else c for c in counts]
        w.log_records("passk", s, [{"kind": "base" if s == 0 else "current", "n": n, "counts": counts,
                                    "curve": [float(v) for v in pass_at_k_curve(n, counts)[0]], "seconds": 1.0}])
        if s:
            t = s / steps
            w.log_metrics(s, {"rlscope/weights/angle_left_mean": 0.01 * t, "rlscope/weights/angle_right_mean": 0.01 * t,
                              "rlscope/weights/sv_rel_change_mean": 1e-4 * t, "rlscope/weights/dw_rank1_energy": 0.5,
                              "rlscope/weights/dw_dir_cos_left": 0.98, "rlscope/weights/dw_sigma1": 0.1 * t})
            w.log_records("weights", s, [{"matrix": f"model.layers.{i}.self_attn.q_proj.weight",
                                          "angle_left_mean": 0.01 * t} for i in range(28)])
    words = ["add", "carry", "sum", "the", "next", "term", "then", "so"]
    for s in range(1, steps + 1, rollout_every):
        rows = []
        for k in range(completions):
            ok = bool(rng.random() < acc[s - 1])
            body = " ".join(rng.choice(words, 10))
            text = f"{body} let me double check {k} {body}" if ok else body
            rows.append({"step": s, "rank": 0, "prompt": f"p{k}", "completion": text, "reward": float(ok),
                         "advantage": 0.0, "length": len(text)})
        w.log_rollouts(rows)
    w.close()
    return run_dir


def write_small_log(path, steps: int = 100, seed: int = 0) -> Path:
    """A verl console log of ``steps`` steps (``step:N - key:value - ...`` lines, as verl prints them): entropy
    decaying, the score rising, length shrinking, KL and gradient norms, a held-out evaluation at step 0 and every 10
    steps -- a small third-party log that engages every analysis that reads metrics (``small_log_seconds``)."""
    rng = np.random.default_rng(seed)
    lines = ["(main_task pid=1) {'actor': {'entropy_coeff': 0.001}, 'trainer': {'total_training_steps': %d}}" % steps]
    for s in range(0, steps + 1):
        f = s / steps
        parts = {"actor/entropy": 0.4 * math.exp(-2.5 * f) + 0.05 + rng.normal(0, 0.005),
                 "critic/score/mean": min(1.0, max(0.0, 0.3 + 0.5 * (1 - math.exp(-4 * f)) + rng.normal(0, 0.03))),
                 "response_length/mean": 300 - 60 * f + rng.normal(0, 4), "response_length/clip_ratio": 0.002,
                 "actor/kl_loss": 0.05 * f, "actor/grad_norm": 0.2 + rng.normal(0, 0.01),
                 "actor/pg_clipfrac": 0.003, "timing_s/step": 30 + rng.normal(0, 1)}
        if s % 10 == 0:
            parts["val-core/openai/gsm8k/reward/mean@1"] = 0.25 + 0.45 * (1 - math.exp(-5 * f)) + rng.normal(0, 0.01)
        if s == 0:  # verl validates before training: the only line of step 0
            parts = {k: v for k, v in parts.items() if k.startswith("val")}
        lines.append(f"(main_task pid=1) step:{s} - " + " - ".join(f"{k}:{v:.6g}" for k, v in parts.items()))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def expected_break(steps: int) -> float:
    return 0.4 * steps


def expected_aha(steps: int) -> float:
    return 0.6 * steps


__all__ = ["expected_aha", "expected_break", "write_small_log", "write_synthetic_run"]
