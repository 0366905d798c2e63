"""pass@k estimator: exact against math.comb for every n <= 64, c, k; errors; crossover."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest

from rlscope.probes.passk import crossover_k, pass_at_k, pass_at_k_curve


def test_estimator_equals_exact_combinatorial_value_for_all_n_up_to_64():
    worst = 0.0
    for n in range(1, 65):
        counts = np.arange(0, n + 1)
        got = pass_at_k(n, counts)  # (n+1, n): every c, every k
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                worst = max(worst, abs(got[c, k - 1] - float(exact)))
    assert worst < 1e-12


def test_curve_is_mean_over_prompts_and_monotone():
    counts = [0, 3, 16, 1]
    curve, per = pass_at_k_curve(16, counts)
    assert per.shape == (4, 16)
    assert curve == pytest.approx(per.mean(axis=0))
    assert curve[0] == pytest.approx(np.mean(counts) / 16)  # pass@1 = mean accuracy
    assert curve[-1] == pytest.approx(3 / 4)  # pass@n = share of prompts with any correct sample
    assert np.all(np.diff(curve) >= -1e-15)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="k=17 must be between 1 and n=16"):
        pass_at_k(16, [3], ks=[17])
    with pytest.raises(ValueError, match="c=9 is outside 0..n"):
        pass_at_k(8, [9])
    with pytest.raises(ValueError, match="n .* must be >= 1"):
        pass_at_k(0, [0])


def test_crossover():
    assert crossover_k([0.1, 0.3, 0.6, 0.9], [0.2, 0.4, 0.6, 0.7]) == 3
    assert crossover_k([0.1, 0.2], [0.3, 0.4]) is None
    assert crossover_k([0.5, 0.6], [0.4, 0.7]) == 1


# -- the evaluation, the callback, the command --------------------------------------------------------------------
import json
import os
import subprocess
import sys

from conftest import ROOT


def _passk_cli(*args, launcher=(), timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.run([*launcher, "-m", "rlscope.cli", "passk", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_two_processes_give_the_same_curve_as_one(tiny_sft_path):
    from helpers import _free_port

    # 10 prompts in batches of 3 (3, 3, 3, 1): rank 0 samples batches 0 and 2, rank 1 batches 1 and 3
    args = ("--model", str(tiny_sft_path), "--task", "chainsum", "-n", "6", "--max-prompts", "10",
            "--batch-prompts", "3", "--json")
    one = _passk_cli(*args, launcher=(sys.executable,))
    assert one.returncode == 0, one.stderr[-3000:]
    two = _passk_cli(*args, launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                      "--master_port", str(_free_port())))
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = json.loads(one.stdout.strip().splitlines()[-1])
    r2 = json.loads(two.stdout.strip().splitlines()[-1])
    assert r1["world_size"] == 1 and r2["world_size"] == 2
    assert r1["counts"] == r2["counts"] and r1["curve"] == r2["curve"]
    assert 0 <= r1["pass@1"] <= r1["pass@6"] <= 1


def test_evaluation_leaves_the_callers_rng_alone(tiny_sft_path):
    import torch

    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    model, tok = load_policy(str(tiny_sft_path))
    task = get_task("chainsum", seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = evaluate_passk(model, tok, task, n=3, max_prompts=4)
    assert torch.equal(torch.rand(3), expected)
    b = evaluate_passk(model, tok, task, n=3, max_prompts=4)
    assert a.counts == b.counts  # seeded per prompt


def test_resumed_run_keeps_its_stored_base_curve(tmp_path):
    from rlscope.callbacks import Observatory
    from rlscope.probes.passk import restore_base
    from rlscope.store import RunReader, RunWriter

    w = RunWriter(tmp_path)
    w.log_records("passk", 0, [{"kind": "base", "n": 4, "curve": [0.1, 0.2, 0.3, 0.4], "counts": [1, 0],
                                "seconds": 1.0}])
    w.log_records("passk", 10, [{"kind": "current", "n": 4, "curve": [0.5, 0.5, 0.5, 0.5], "counts": [2, 2],
                                 "seconds": 1.0}])
    w.close()
    state: dict = {}
    restore_base(RunReader(tmp_path), state)
    base = state["bases"][4]
    assert base["curve"] == [0.1, 0.2, 0.3, 0.4] and base["counts"] == [1, 0]
    assert 8 not in state["bases"]  # another n: measure again
    with pytest.raises(ValueError, match="k=32 must be between 1 and n=16"):
        Observatory({"passk": {"task": "chainsum", "n": 16, "ks": [1, 32]}})


def test_sft_example_gets_base_and_curves(tmp_path, tiny_path):
    from rlscope.store import RunReader

    out = tmp_path / "sft"
    proc = subprocess.run([sys.executable, str(ROOT / "callbacks" / "passk_sft.py"), "--output_dir", str(out),
                           "--model", str(tiny_path), "--max_steps", "4", "--every", "2", "-n", "4", "--prompts", "6"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = RunReader(out).records("passk")
    assert [(r["step"], r["kind"]) for r in recs] == [(0, "base"), (2, "current"), (4, "current")]
    assert all(len(r["curve"]) == 4 and len(r["counts"]) == 6 for r in recs)
    names = {(r["name"], r["step"]) for r in RunReader(out).records("metrics")}
    assert ("rlscope/passk/pass@1", 4) in names and ("rlscope/passk/crossover_found", 4) in names
    assert ("rlscope/passk/base_pass@4", 0) in names


# -- keyed sampling (Gumbel-max): the sampler against softmax, the decoding loop against HF generate -------------------
def _nucleus_probs(logits, temperature, top_p):
    """Brute force: softmax(logits / T), then the smallest set of most likely tokens whose probability reaches
    top_p, renormalised (0 outside it)."""
    import math

    z = [v / temperature for v in logits]
    m = max(z)
    e = [math.exp(v - m) for v in z]
    p = [v / sum(e) for v in e]
    keep, total = set(), 0.0
    for i in sorted(range(len(p)), key=lambda i: -p[i]):
        keep.add(i)
        total += p[i]
        if total >= top_p:
            break
    mass = sum(p[i] for i in keep)
    return np.array([p[i] / mass if i in keep else 0.0 for i in range(len(p))])


def _keyed_draws(logits, temperature, top_p, rows=4000, positions=100, seed=0):
    """(positions, rows) tokens drawn by the keyed sampler from the same logits (row r: prompt r // 4, sample r % 4)."""
    import torch

    from rlscope.sampling import KeyedGumbelSampler, row_keys

    keys = row_keys(seed, [r // 4 for r in range(rows)], [r % 4 for r in range(rows)])
    sampler = KeyedGumbelSampler(keys, prompt_width=0, temperature=temperature, top_p=top_p)
    batch = torch.tensor(logits, dtype=torch.float32).expand(rows, -1)
    return np.stack([sampler.scores(batch, t).argmax(-1).numpy() for t in range(positions)])


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9), (1.5, 0.6)])
def test_keyed_gumbel_sampler_draws_from_softmax_with_temperature_and_top_p(temperature, top_p):
    """400,000 draws (4,000 keys x 100 positions) from fixed logits against the brute-force filtered softmax.

    Tolerance: the keys are fixed, so the test is deterministic; for an exact sampler the chi-square statistic
    exceeds its 1 - 1e-6 quantile with probability 1e-6, and each frequency lies within 5 standard errors
    (sqrt(q (1 - q) / N) <= 0.0008 at N = 400,000) of its probability. That detects any probability off by more than
    ~0.004 absolute (a wrong temperature, nucleus or noise distribution is off by far more); tokens outside the
    nucleus must never be drawn."""
    from scipy.stats import chi2

    logits = [2.0, 1.2, 0.9, 0.0, -0.5, -2.0, -4.0]
    q = _nucleus_probs(logits, temperature, top_p)
    draws = _keyed_draws(logits, temperature, top_p).ravel()
    n = draws.size
    counts = np.bincount(draws, minlength=len(logits))
    assert counts[q == 0].sum() == 0, "a token outside the nucleus was drawn"
    kept = q > 0
    stat = float((((counts - n * q) ** 2)[kept] / (n * q[kept])).sum())
    assert stat < chi2.ppf(1 - 1e-6, kept.sum() - 1), (stat, counts / n, q)
    assert np.all(np.abs(counts / n - q) <= 5 * np.sqrt(q * (1 - q) / n))


def test_keyed_draws_are_independent_across_positions_and_samples():
    """Joint frequencies of (token at t, token at t+1) of one row and (sample s, sample s+1) of one prompt at one
    position equal the product of the marginals (chi-square on the K x K table, 1 - 1e-6 quantile)."""
    from scipy.stats import chi2

    logits = [1.0, 0.5, 0.0, -0.5]
    q = _nucleus_probs(logits, 1.0, 1.0)
    draws = _keyed_draws(logits, 1.0, 1.0, rows=4000, positions=60)  # (positions, rows)
    expected = np.outer(q, q)
    for a, b in ((draws[:-1], draws[1:]), (draws[:, 0::2], draws[:, 1::2])):
        joint = np.zeros((4, 4))
        np.add.at(joint, (a.ravel(), b.ravel()), 1)
        n = joint.sum()
        stat = float(((joint - n * expected) ** 2 / (n * expected)).sum())
        assert stat < chi2.ppf(1 - 1e-6, 15), stat


def test_hash_arithmetic_is_exact():
    """fmix32 on int64 tensors against murmur3's finaliser in Python integers (edges and random words)."""
    import random

    import torch

    from rlscope.sampling import fmix32

    def reference(x):
        x ^= x >> 16
        x = (x * 0x85EBCA6B) & 0xFFFFFFFF
        x ^= x >> 13
        x = (x * 0xC2B2AE35) & 0xFFFFFFFF
        return x ^ (x >> 16)

    rng = random.Random(0)
    words = [0, 1, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1] + [rng.getrandbits(32) for _ in range(2000)]
    assert fmix32(torch.tensor(words, dtype=torch.int64)).tolist() == [reference(w) for w in words]


def _keyed_and_hf(tiny_sft_path, prompts: int, n: int, seed: int, temperature: float, top_p: float, compact_ats):
    """The keyed decoding loop's tokens at each ``compact_at`` and HF ``generate``'s with the same sampler as its
    logits processor and greedy decoding, for ``prompts`` held-out prompts x ``n`` samples; and what built them."""
    import torch
    from transformers import GenerationConfig, LogitsProcessorList

    from rlscope.decode import keyed_generate
    from rlscope.passk_eval import left_padded, pad_id
    from rlscope.sampling import KeyedGumbelSampler, row_keys
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    model, tok = load_policy(str(tiny_sft_path))
    model.eval()
    task = get_task("chainsum", seed=0)
    texts = [task.render_prompt(r, tok) for r in task.rows("heldout")[:prompts]]
    max_new = task.max_completion_length
    ids, mask = left_padded(tok, texts, "cpu")
    keys = row_keys(seed, [i for i in range(prompts) for _ in range(n)], list(range(n)) * prompts)
    sampler = KeyedGumbelSampler(keys, ids.shape[1], temperature, top_p)
    runs = {c: keyed_generate(model, ids, mask, sampler, max_new, [tok.eos_token_id], pad_id(tok), repeats=n,
                              compact_at=c) for c in compact_ats}
    config = GenerationConfig(do_sample=False, num_beams=1, top_k=None, top_p=None, temperature=None,
                              repetition_penalty=1.0, max_new_tokens=max_new, pad_token_id=pad_id(tok),
                              eos_token_id=tok.eos_token_id)
    with torch.no_grad():
        hf = model.generate(input_ids=ids.repeat_interleave(n, 0), attention_mask=mask.repeat_interleave(n, 0),
                            generation_config=config, logits_processor=LogitsProcessorList([sampler]))
    return runs, hf[:, ids.shape[1]:], (model, tok, ids, mask, sampler)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.8, 0.95)])
def test_keyed_decoding_equals_hf_generate_with_the_keyed_processor(tiny_sft_path, temperature, top_p):
    """The decoding loop (prompts run once, finished rows dropped from the batch and the KV cache) gives the tokens
    HF ``generate`` gives with the same sampler as its logits processor and greedy decoding."""
    import torch

    from rlscope.passk_eval import pad_id

    runs, hf, (_, tok, *_) = _keyed_and_hf(tiny_sft_path, 4, 4, 3, temperature, top_p, (None,))
    ours = runs[None]
    assert torch.equal(ours[:, :hf.shape[1]], hf) and bool((ours[:, hf.shape[1]:] == pad_id(tok)).all())
    ends = (ours == tok.eos_token_id).any(1)
    assert 0 < int(ends.sum()), "some samples end before the budget (the loop dropped rows)"


def test_compaction_threshold_does_not_change_the_tokens(tiny_sft_path):
    """Ended rows dropped at once (compact_at 0), when a quarter / half of the batch has ended, or never (1: fed
    padding until all end, as HF generate does): the same tokens, equal to HF generate's, with rows ending at many
    different steps; an ended row writes only padding after its end-of-sequence token."""
    import torch

    from rlscope.decode import keyed_generate
    from rlscope.passk_eval import pad_id

    runs, hf, (model, tok, ids, mask, sampler) = _keyed_and_hf(tiny_sft_path, 6, 6, 5, 1.0, 1.0, (0.0, 0.25, 0.5, 1.0))
    n = 6
    ours = runs[0.0]
    assert all(torch.equal(ours, r) for r in runs.values())
    assert torch.equal(ours[:, :hf.shape[1]], hf) and bool((ours[:, hf.shape[1]:] == pad_id(tok)).all())
    is_eos = ours == tok.eos_token_id
    ends = [int(row.nonzero()[0]) for row in is_eos if row.any()]
    assert len(set(ends)) >= 8, ends  # rows end at many different steps
    for row, end in zip(ours[is_eos.any(1)], ends):
        assert bool((row[end + 1:] == pad_id(tok)).all())
    with pytest.raises(ValueError, match=r"compact_at must be in \[0, 1\], got 2"):
        keyed_generate(model, ids, mask, sampler, 4, [tok.eos_token_id], pad_id(tok), repeats=n, compact_at=2)


def test_counts_do_not_depend_on_batching_and_change_with_the_seed(tiny_sft_path):
    """Samples are keyed per (prompt, sample, position): 1, 5 or 16 prompts per batch give the same counts on the
    tiny model on CPU (left padding and batch shape do not change its logits here); another seed gives other
    counts."""
    from rlscope.passk_eval import evaluate_passk
    from rlscope.tasks import get_task
    from rlscope.tinymodel import load_policy

    model, tok = load_policy(str(tiny_sft_path))
    task = get_task("chainsum", seed=0)
    runs = {b: evaluate_passk(model, tok, task, n=8, max_prompts=16, batch_prompts=b).counts for b in (16, 5, 1)}
    assert runs[16] == runs[5] == runs[1]
    assert 0 < sum(runs[16]) < 16 * 8
    other = evaluate_passk(model, tok, task, n=8, max_prompts=16, seed=1).counts
    assert other != runs[16]


def test_sampling_options_are_checked_when_attached():
    from rlscope.callbacks import Observatory
    from rlscope.errors import UsageError

    with pytest.raises(UsageError, match="temperature must be > 0, got 0"):
        Observatory({"passk": {"task": "chainsum", "n": 4, "temperature": 0}})
    with pytest.raises(UsageError, match=r"top_p must be in \(0, 1\], got 1.5"):
        Observatory({"passk": {"task": "chainsum", "n": 4, "top_p": 1.5}})
    with pytest.raises(ValueError, match="batch_prompts must be >= 1, got 0"):
        Observatory({"passk": {"task": "chainsum", "n": 4, "batch_prompts": 0}})


def test_default_batches_are_bounded_by_rows_not_prompts():
    from rlscope.passk_eval import BATCH_ROWS, default_batch_prompts

    assert BATCH_ROWS == 1024
    assert [default_batch_prompts(n) for n in (1, 16, 64, 1000, 4096)] == [1024, 64, 16, 1, 1]
    assert default_batch_prompts(16, 5) == 5
    with pytest.raises(ValueError, match="batch_prompts must be >= 1"):
        default_batch_prompts(16, 0)
