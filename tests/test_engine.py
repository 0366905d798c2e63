"""The probe engine: planning (cadences, options, sources), every probe held to its declaration, publishing, the
`rlscope probes` listing, and declarations that do real work on a real run."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings

import pytest
import torch

from conftest import ROOT
from rlscope.cadence import Cadence
from rlscope.callbacks import Observatory
from rlscope.callbacks.engine import plan
from rlscope.callbacks.sources import SOURCES
from rlscope.probes import PROBES, Curves, Histogram, Records, Table, get_probe

# -- planning ------------------------------------------------------------------------------------------------------


def test_defaults_are_the_token_probes_with_their_declared_cadence():
    runs, sources = plan()
    assert sorted(runs) == ["behavior", "cov", "entropy"] and list(sources) == ["tokens"]
    assert all(r.cadence == Cadence(every=1) for r in runs.values())


def test_spec_forms_cadences_and_option_routing():
    runs, sources = plan({"entropy": 5, "cov": False, "passk": {"task": "chainsum", "n": 8, "every": 10, "ks": [1, 8]},
                          "weights": {"cadence": "end", "k": 4, "snapshot_dir": "/tmp/w0"}, "grad": "2+end"})
    assert "cov" not in runs  # False: off
    assert runs["entropy"].cadence == Cadence(every=5)
    assert runs["passk"].cadence == Cadence(10, at_start=True, at_end=True)  # the declared start/end stay
    assert runs["passk"].options == {"ks": [1, 8]}  # probe options to the probe...
    assert sources["samples"] == {"task": "chainsum", "n": 8}  # ...source options to its source
    assert runs["weights"].cadence == Cadence(0, at_end=True) and runs["weights"].options == {"k": 4}
    assert sources["weights"] == {"snapshot_dir": "/tmp/w0"}
    assert runs["grad"].cadence == Cadence(2, at_end=True)
    runs, _ = plan(["entropy", "cov"], every={"cov": "off"})
    assert list(runs) == ["entropy"]
    runs, _ = plan(["entropy", "cov"], every=3)
    assert {r.cadence.every for r in runs.values()} == {3}


def test_planning_errors_name_the_problem():
    with pytest.raises(KeyError, match=r"cadence given for probes that are not enabled: \['cov'\]"):
        plan(["entropy"], every={"cov": 2})
    with pytest.raises(KeyError, match=r"unknown option 'top_rati' of probe 'cov'\. Did you mean 'top_ratio'\?"):
        plan({"cov": {"top_rati": 0.1}})
    with pytest.raises(ValueError, match="option 'reflection_words' given twice"):
        plan({"behavior": {"reflection_words": ["wait"]}, "entropy": {"reflection_words": ["hmm"]}})
    with pytest.raises(ValueError, match="none of its probes is enabled"):
        plan(["grad"], sources={"tokens": {"dump_every": 1}})
    with pytest.raises(ValueError, match="pass@k needs a task"):
        Observatory({"passk": True})


def test_a_heavy_probe_every_step_is_warned_about():
    with pytest.warns(UserWarning, match="probe 'weights' is heavy"):
        plan({"weights": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan({"weights": 50, "entropy": 1})


def test_every_source_a_probe_declares_is_registered_and_provides_its_inputs():
    from dataclasses import fields

    from rlscope.probes.batch import TokenBatch
    from rlscope.probes.grad import GradView
    from rlscope.probes.passk import SampleCounts
    from rlscope.probes.weights import WeightView

    views = {"tokens": TokenBatch, "weights": WeightView, "samples": SampleCounts, "gradients": GradView}
    assert sorted(views) == SOURCES.names()
    for name, probe in PROBES.items():
        provided = {f.name for f in fields(views[probe.source])}
        assert set(probe.inputs) <= provided, (name, set(probe.inputs) - provided)


# -- every probe returns what it declares ----------------------------------------------------------------------------


def _views():
    from test_probes import random_batch

    from rlscope.probes.grad import GradView
    from rlscope.probes.passk import SampleCounts
    from rlscope.probes.weights import WeightView

    batch = random_batch(0)
    batch.has_eos = torch.ones(batch.n_rows, dtype=torch.bool)
    batch.reflections = torch.arange(batch.n_rows, dtype=torch.float64)
    batch.repetition = torch.rand(batch.n_rows, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    w0 = {n: torch.randn(12, 9, generator=g) for n in names}
    wt = {n: w + 0.01 * torch.randn(12, 9, generator=g) for n, w in w0.items()}
    grad_names = names + ["model.embed_tokens.weight"]
    from rlscope.adapters import LoraWeight  # an adapted matrix too: the adapters' outputs (lora_*)

    lora = "model.layers.1.self_attn.v_proj.weight"
    A, B = torch.randn(2, 9, generator=g), torch.zeros(12, 2)
    steps = [LoraWeight(w0[names[0]], B + 0.1 * i * torch.randn(12, 2, generator=g), A, 2.0) for i in (1, 2)]
    zero = LoraWeight(w0[names[0]], B, A, 2.0)

    def view(i):
        return WeightView([*((n, w0[n], wt[n]) for n in names), (lora, zero, steps[i])])

    return {
        "tokens": [batch, batch],
        "weights": [view(0), view(1)],
        "samples": [SampleCounts(4, [0, 1, 4], kind="base"), SampleCounts(4, [3, 3, 0], kind="current")],
        "gradients": [GradView(grad_names, *(torch.rand(3, dtype=torch.float64) for _ in range(3)))] * 2,
    }


def _pattern(output: str) -> re.Pattern:
    return re.compile("^" + re.sub(r"<[^>]+>", r"[^/]+", re.escape(output).replace(r"\<", "<").replace(r"\>", ">"))
                      + "$")


@pytest.mark.parametrize("name", PROBES.names())
def test_each_probe_returns_exactly_what_it_declares(name):
    probe = get_probe(name)
    state: dict = {}
    seen_scalars, seen_extras = set(), set()
    for view in _views()[probe.source]:  # twice: the first call fills the state, the second reads it
        result = probe.fn(view, state, **probe.options)
        for key, value in result.items():
            if isinstance(value, (Histogram, Curves, Table, Records)):
                assert key in probe.extras, (name, key)
                seen_extras.add(key)
            else:
                assert isinstance(value, float) and not isinstance(value, bool), (name, key, type(value))
                matched = [o for o in probe.outputs if _pattern(o).match(key)]
                assert matched, f"{name}: output {key!r} is not declared"
                seen_scalars.update(matched)
    assert seen_scalars == set(probe.outputs), (name, set(probe.outputs) - seen_scalars)
    assert seen_extras == set(probe.extras)


def test_probes_command_lists_every_probe_as_json(tmp_path):
    p = subprocess.run([sys.executable, "-m", "rlscope.cli", "probes", "--json"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    listed = {r["name"]: r for r in json.loads(p.stdout.strip().splitlines()[-1])["probes"]}
    assert {"entropy", "cov", "behavior", "passk", "weights", "grad"} <= set(listed)
    assert listed["grad"]["source"] == "gradients" and listed["grad"]["cadence"] == "every 1"
    assert listed["passk"]["source"] == "samples" and listed["passk"]["cadence"] == "every 50+start+end"
    assert listed["weights"]["cadence"] == "every 50+end" and listed["entropy"]["source"] == "tokens"
    assert "rlscope/grad/norm" in listed["grad"]["metrics"] and "rlscope/cov/seconds" in listed["cov"]["metrics"]
    for row in listed.values():
        assert set(row) >= {"source", "inputs", "cost", "cadence", "metrics", "options", "doc"} and row["doc"]


# -- publishing ------------------------------------------------------------------------------------------------------


def test_publisher_splits_a_result_into_metrics_records_and_media(tmp_path):
    from rlscope.callbacks.publish import Publisher
    from rlscope.store import RunReader, RunWriter

    pub = Publisher(RunWriter(tmp_path), log_prefix="sft/")
    out = pub.probe_result(7, "toy", {"a": 1.5, "n": 3, "hist": Histogram([1], [0, 1]),
                                      "rows": Records("toy", [{"x": 1}, {"x": 2}])})
    assert out == {"rlscope/toy/a": 1.5, "rlscope/toy/n": 3.0}
    pub.trainer_logs(7, {"loss": 0.25})
    pub.trainer_logs(9, {"train_runtime": 12.0})
    with pytest.raises(TypeError, match="probe 'toy' returned 'bad' as str"):
        pub.probe_result(8, "toy", {"bad": "text"})
    pub.close()
    r = RunReader(tmp_path)
    assert {(x["step"], x["name"]) for x in r.records("metrics")} == {
        (7, "rlscope/toy/a"), (7, "rlscope/toy/n"), (7, "sft/loss"), (9, "sft/summary/train_runtime")}
    assert r.records("toy") == [{"step": 7, "x": 1}, {"step": 7, "x": 2}]


# -- declarations do real work (real tiny run) -------------------------------------------------------------------------


def test_text_is_decoded_and_fields_gathered_only_for_due_probes(tmp_path, tiny_sft_path, monkeypatch):
    """With only entropy and cov enabled, no completion is decoded (behaviour features read text); they run per rank
    (exact reductions), so no token is gathered -- with ``reduce: gather`` only their inputs travel; with behavior
    due, the text features are computed."""
    from helpers import run_recipe
    from rlscope.callbacks.sources import tokens
    from rlscope.store import RunReader

    decoded, gathered = [], []
    real_features, real_gather = tokens.row_features, tokens.gather_batch
    monkeypatch.setattr(tokens, "row_features", lambda *a, **k: decoded.append(1) or real_features(*a, **k))
    monkeypatch.setattr(tokens, "gather_batch",
                        lambda b, acc, names=None: gathered.append(set(names)) or real_gather(b, acc, names))
    s = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "lean", "--eval_heldout", "false",
                   "--probes", "entropy", "cov")
    names = RunReader(s["run_dir"]).metric_names()
    assert "rlscope/entropy/mean" in names and "rlscope/cov/mean" in names
    assert not [n for n in names if n.startswith("rlscope/behavior/")]
    assert decoded == [] and gathered == []
    engine = RunReader(s["run_dir"]).series("rlscope/engine/tokens_comm_bytes")
    assert engine[0] == [1, 2] and engine[1] == [0.0, 0.0]  # one process: nothing to combine
    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "gather", "--eval_heldout", "false",
               "--probes", "entropy", "cov", "--probe_options", '{"tokens": {"reduce": "gather"}}')
    assert decoded == [] and gathered == [{"mask", "entropies", "correct", "logps", "advantages"}] * 2
    decoded.clear()
    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "full", "--eval_heldout", "false",
               "--probe_every", '{"behavior": 2}')
    assert decoded  # behaviour due at step 2: the text features were computed
    steps = RunReader(tmp_path / "full").series("rlscope/behavior/reflection_rate")[0]
    assert steps == [2] and RunReader(tmp_path / "full").series("rlscope/entropy/mean")[0] == [1, 2]


def test_seconds_of_every_probe_and_of_the_engine_are_published(tmp_path, tiny_sft_path):
    from helpers import run_recipe
    from rlscope.store import RunReader

    s = run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "t", "--eval_heldout", "false")
    r = RunReader(s["run_dir"])
    for name in ("rlscope/entropy/seconds", "rlscope/engine/seconds", "rlscope/engine/tokens_seconds"):
        steps, values = r.series(name)
        assert steps == [1, 2] and all(v >= 0 and math.isfinite(v) for v in values), name


def test_each_metric_is_stored_once_per_step_where_the_last_steps_pass_and_the_end_pass_meet(tmp_path, tiny_sft_path):
    """At the last step the step's pass (token probes and the gradient probe, every step) and the end-of-run pass
    (pass@k: at start and end only) both run. Read from the raw metrics file (no reader's dedupe): every
    (step, name) once; the engine's timings at that step are the sums over both passes."""
    from helpers import run_recipe

    run_recipe(tmp_path, "tiny_dapo.yaml", "--max_steps", "2", "--run_name", "meet", "--eval_heldout", "false",
               "--probes", "entropy", "grad", "passk", "--probe_every", '{"passk": "start,end"}',
               "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}}')
    rows = [json.loads(line) for line in (tmp_path / "meet" / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["name"]) for r in rows]
    assert [k for k in set(keys) if keys.count(k) > 1] == []
    at = {r["name"]: r["value"] for r in rows if r["step"] == 2 and r["name"].startswith("rlscope/")}
    assert {"rlscope/entropy/mean", "rlscope/grad/seconds", "rlscope/passk/pass@1"} <= set(at)  # both passes ran
    parts = [at["rlscope/engine/tokens_seconds"], at["rlscope/engine/gradients_seconds"],
             at["rlscope/engine/samples_seconds"]]
    assert at["rlscope/engine/seconds"] >= sum(parts) > at["rlscope/engine/samples_seconds"] > 0
    engine_steps = sorted(r["step"] for r in rows if r["name"] == "rlscope/engine/seconds")
    assert engine_steps == [0, 1, 2]  # the start pass (pass@k's base), each step; the end pass merged into step 2
