"""Token probes against brute-force loops over tokens, on random inputs and the numerically awkward cases."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from rlscope.probes import get_probe
from rlscope.probes.batch import TokenBatch, concat
from rlscope.probes.behavior import behavior_stats, reflection_count, repetition_ratio, row_features
from rlscope.probes.covariance import band_mask, covariance_stats, random_subset, token_products, top_mask
from rlscope.probes.entropy import entropy_stats


def random_batch(seed: int, n: int = 12, t: int = 20, empty_rows: int = 2) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, t + 1, (n,), generator=g)
    lengths[:empty_rows] = 0
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return TokenBatch(logps=-torch.rand(n, t, generator=g, dtype=torch.float64) * 4,
                      entropies=torch.rand(n, t, generator=g, dtype=torch.float64) * 3,
                      mask=mask, advantages=torch.randn(n, generator=g, dtype=torch.float64) * 2,
                      correct=torch.rand(n, generator=g) > 0.5,
                      completion_ids=torch.randint(0, 9, (n, t), generator=g))


def tokens(batch: TokenBatch):
    """Brute force: one tuple per valid token (row, logp, entropy, advantage, correct)."""
    out = []
    for i in range(batch.mask.shape[0]):
        for j in range(batch.mask.shape[1]):
            if batch.mask[i, j]:
                out.append((i, float(batch.logps[i, j]), float(batch.entropies[i, j]), float(batch.advantages[i]),
                            bool(batch.correct[i])))
    return out


def percentile(vals, q):
    s = sorted(vals)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@pytest.mark.parametrize("seed", range(6))
def test_entropy_matches_loop(seed):
    b = random_batch(seed)
    tok = tokens(b)
    ent = [x[2] for x in tok]
    state = {}
    out = entropy_stats(b, state)
    assert out["mean"] == pytest.approx(sum(ent) / len(ent), abs=1e-6)
    for p in (10, 50, 90, 99):
        assert out[f"p{p}"] == pytest.approx(percentile(ent, p / 100), abs=1e-6)
    k = math.ceil(0.2 * len(ent))
    top = sorted(ent)[-k:]
    assert out["top20_mean"] == pytest.approx(sum(top) / k, abs=1e-6)
    assert out["top20_share"] == pytest.approx(sum(top) / sum(ent), abs=1e-6)
    thr = percentile(ent, 0.8)
    assert out["p80"] == pytest.approx(thr, abs=1e-6)
    assert out["above_first_p80_share"] == pytest.approx(sum(e > thr for e in ent) / len(ent), abs=1e-6)
    cor = [x[2] for x in tok if x[4]]
    wr = [x[2] for x in tok if not x[4]]
    assert out["correct_mean"] == pytest.approx(sum(cor) / len(cor), abs=1e-6)
    assert out["wrong_mean"] == pytest.approx(sum(wr) / len(wr), abs=1e-6)
    assert out["n_tokens"] == len(ent) and out["nan_share"] == 0
    assert sum(out["hist"].counts) == len(ent)
    # the threshold is fixed at the first call: a second batch is compared against it
    b2 = random_batch(seed + 100)
    out2 = entropy_stats(b2, state)
    ent2 = [x[2] for x in tokens(b2)]
    assert out2["above_first_p80_share"] == pytest.approx(sum(e > thr for e in ent2) / len(ent2), abs=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_covariance_matches_loop(seed):
    b = random_batch(seed, n=40, t=30)
    tok = tokens(b)
    n = len(tok)
    ma = sum(x[3] for x in tok) / n
    ml = sum(x[1] for x in tok) / n
    prods = [(x[3] - ma) * (x[1] - ml) for x in tok]
    out = covariance_stats(b, {})
    assert out["mean"] == pytest.approx(sum(prods) / n, abs=1e-6)
    k = max(1, int(n * 0.002))
    assert out["top_mean"] == pytest.approx(sum(sorted(prods)[-k:]) / k, abs=1e-6)
    assert out["band_share"] == pytest.approx(sum(1 < p < 5 for p in prods) / n, abs=1e-6)
    sa = math.sqrt(sum((x[3] - ma) ** 2 for x in tok) / n)
    sl = math.sqrt(sum((x[1] - ml) ** 2 for x in tok) / n)
    assert out["corr"] == pytest.approx(sum(prods) / n / (sa * sl), abs=1e-6)
    assert out["corr"] == pytest.approx(np.corrcoef([x[3] for x in tok], [x[1] for x in tok])[0, 1], abs=1e-6)
    assert out["zero_adv_var"] == 0


def test_covariance_top_ratio_option_and_selectors():
    b = random_batch(3, n=50, t=40, empty_rows=0)
    prod = token_products(b.logps, b.advantages, b.mask)
    tok = tokens(b)
    n = len(tok)
    flat = sorted(prod[b.mask].tolist())
    for ratio in (0.01, 0.1):
        sel = top_mask(prod, b.mask, ratio)
        k = max(1, int(n * ratio))
        assert int(sel.sum()) == k and (sel & ~b.mask).sum() == 0
        assert sorted(prod[sel].tolist()) == pytest.approx(flat[-k:])
        out = covariance_stats(b, {}, top_ratio=ratio)
        assert out["top_mean"] == pytest.approx(sum(flat[-k:]) / k, abs=1e-6)
    band = band_mask(prod, b.mask, 0.1, 0.5)
    assert int(band.sum()) == sum(0.1 < p < 0.5 for p in flat)
    pick = random_subset(band, 3, torch.Generator().manual_seed(0))
    assert int(pick.sum()) == min(3, int(band.sum())) and not (pick & ~band).any()
    assert not random_subset(torch.zeros_like(band), 3).any()


def test_all_equal_advantages_flagged_not_crashed():
    b = random_batch(1)
    b.advantages = torch.full_like(b.advantages, 0.7)
    out = covariance_stats(b, {})
    assert out["mean"] == 0.0 and out["zero_adv_var"] == 1.0 and math.isnan(out["corr"])


def test_empty_mask_and_nan_inputs_flagged():
    b = random_batch(2)
    b.mask = torch.zeros_like(b.mask)
    e = entropy_stats(b, {})
    c = covariance_stats(b, {})
    assert e["n_tokens"] == 0 and math.isnan(e["mean"]) and c["n_tokens"] == 0 and math.isnan(c["mean"])
    b = random_batch(4, empty_rows=0)
    i, j = b.mask.nonzero()[0].tolist()
    b.entropies[i, j] = float("nan")
    b.logps[i, j] = float("inf")
    n = int(b.mask.sum())
    e = entropy_stats(b, {})
    c = covariance_stats(b, {})
    assert e["nan_share"] == pytest.approx(1 / n) and c["nan_share"] == pytest.approx(1 / n)
    assert math.isfinite(e["mean"]) and math.isfinite(c["mean"])
    b.mask[i, j] = False
    assert e["mean"] == pytest.approx(entropy_stats(b, {})["mean"], abs=1e-12)
    assert c["mean"] == pytest.approx(covariance_stats(b, {})["mean"], abs=1e-12)


def test_concat_equals_one_batch():
    a, b = random_batch(5, t=10), random_batch(6, t=17)
    joined = concat([a, b])
    assert joined.mask.shape == (24, 17)
    tok = tokens(a) + tokens(b)
    assert entropy_stats(joined, {})["mean"] == pytest.approx(sum(x[2] for x in tok) / len(tok), abs=1e-9)


def test_behavior_features_and_stats():
    assert reflection_count("Wait, let me recheck. wait... Try  again; awaits however") == 5
    assert reflection_count("waiting", ("wait",)) == 0
    assert repetition_ratio([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(1 - 2 / 5)
    assert repetition_ratio([1, 2], n=4) == 0.0
    texts = ["1+2,3#3", "wait 1+2#3 wait", "", "however retry"]
    ids = torch.tensor([[1, 2, 3, 4, 1, 2, 3], [5, 5, 5, 5, 5, 0, 0], [0] * 7, [7, 8, 9, 0, 0, 0, 0]])
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0], [0] * 7, [1] * 3 + [0] * 4]).bool()
    feats = row_features(texts, ids, mask, ngram=2)
    assert feats["reflections"].tolist() == [0, 2, 0, 2]
    assert feats["repetition"].tolist() == pytest.approx([1 - 4 / 6, 1 - 1 / 4, 0.0, 0.0])
    b = TokenBatch(mask=mask, correct=torch.tensor([True, False, False, True]),
                   has_eos=torch.tensor([True, True, False, True]), **feats)
    out = behavior_stats(b, {})
    assert out["length_mean"] == pytest.approx((7 + 5 + 0 + 3) / 4)
    assert out["length_correct"] == pytest.approx(5.0) and out["length_wrong"] == pytest.approx(2.5)
    assert out["clipped_share"] == 0.25 and out["empty_share"] == 0.25
    assert out["reflection_rate"] == 1.0 and out["reflection_share"] == 0.5
    # a completion that is only its EOS (TRL's mask counts it) is empty too
    eos_only = TokenBatch(mask=torch.tensor([[1, 0], [1, 1]]).bool(), has_eos=torch.tensor([True, True]))
    assert behavior_stats(eos_only, {})["empty_share"] == 0.5
    assert out["repetition"] == pytest.approx(sum(feats["repetition"].tolist()) / 4)
    with pytest.raises(ValueError, match="texts"):
        row_features(texts[:2], ids, mask)


def test_behavior_random_against_loop():
    rng = random.Random(0)
    texts = [" ".join(rng.choice(["wait", "x", "Retry", "however,", "waiter", "try", "again"]) for _ in range(12))
             for _ in range(20)]
    words = ("wait", "retry", "however", "try again")
    for t in texts:
        toks = [w.strip(",").lower() for w in t.split()]
        brute = sum(w in ("wait", "retry", "however") for w in toks) + sum(
            toks[i] == "try" and toks[i + 1] == "again" for i in range(len(toks) - 1))
        assert reflection_count(t, words) == brute


def test_unknown_probe_names_a_close_one():
    with pytest.raises(KeyError, match="Did you mean 'entropy'"):
        get_probe("entropi")


# -- Clip-Cov / KL-Cov losses: the covariance selector in the loss, against loops written after verl -------------
def _loss_inputs(seed, n=6, t=9):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n, t, generator=g) > 0.2
    logps = (-torch.rand(n, t, generator=g, dtype=torch.float64) * 3).requires_grad_(True)
    old = logps.detach() + 0.3 * torch.randn(n, t, generator=g, dtype=torch.float64)
    adv = torch.randn(n, 1, generator=g, dtype=torch.float64) * 3
    return logps, old, adv, mask


def _brute_products(logps, adv, mask):
    idx = [(i, j) for i in range(mask.shape[0]) for j in range(mask.shape[1]) if mask[i, j]]
    ma = sum(float(adv[i, 0]) for i, _ in idx) / len(idx)
    ml = sum(float(logps[i, j]) for i, j in idx) / len(idx)
    return {(i, j): (float(adv[i, 0]) - ma) * (float(logps[i, j]) - ml) for i, j in idx}


@pytest.mark.parametrize("seed", range(4))
def test_kl_cov_loss_matches_loop(seed):
    from rlscope.trainers.cov_losses import kl_cov_loss

    logps, old, adv, mask = _loss_inputs(seed)
    loss, selected = kl_cov_loss(logps, old, adv, mask, ratio=0.1, coef=0.7)
    prods = _brute_products(logps.detach(), adv, mask)
    k = max(1, int(len(prods) * 0.1))
    top = set(sorted(prods, key=prods.get, reverse=True)[:k])
    assert {tuple(x) for x in selected.nonzero().tolist()} == top
    for (i, j) in prods:
        r = math.exp(float(logps[i, j]) - float(old[i, j]))
        want = -float(adv[i, 0]) * r + (0.7 * abs(float(logps[i, j]) - float(old[i, j])) if (i, j) in top else 0.0)
        assert float(loss[i, j]) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_clip_cov_loss_matches_loop(seed):
    from rlscope.trainers.cov_losses import clip_cov_loss

    logps, old, adv, mask = _loss_inputs(seed)
    loss, selected = clip_cov_loss(logps, old, adv, mask, 0.2, 0.28, ratio=0.05, lb=0.05, ub=3.0,
                                   generator=torch.Generator().manual_seed(seed))
    prods = _brute_products(logps.detach(), adv, mask)
    cand = set()
    for (i, j), c in prods.items():
        r = math.exp(float(logps[i, j]) - float(old[i, j]))
        a = float(adv[i, 0])
        pg1, pg2 = -a * r, -a * min(max(r, 0.8), 1.28)
        if 0.05 < c < 3.0 and not pg2 > pg1:
            cand.add((i, j))
        want = 0.0 if selected[i, j] else max(pg1, pg2)
        assert float(loss[i, j]) == pytest.approx(want, abs=1e-9)
    sel = {tuple(x) for x in selected.nonzero().tolist()}
    assert sel <= cand and len(sel) == min(max(1, int(0.05 * len(prods))), len(cand))
    (loss * mask).sum().backward()
    assert torch.all(logps.grad[selected] == 0)  # the selected tokens get no gradient
