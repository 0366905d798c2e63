"""pass@k curve tables (what papers publish: a k column, one pass@k column per model): detection and reading of wide,
long, percent and TSV tables, the boundary analysis from curves alone (crossover, area between the curves, checked
against brute force; no intervals claimed), one clear error per malformed table, and `rlscope analyze` / `rlscope
report` end to end. Every table is written here."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rlscope.analysis.analyses import ANALYSES, run_analysis
from rlscope.analysis.readers import detect_format, read_run

YUE = ("k,base,rl\n1,0.312,0.455\n2,0.41,0.52\n4,0.50,0.58\n8,0.6,0.65\n16,0.7,0.71\n32,0.78,0.76\n64,0.84,0.8\n"
       "128,0.88,0.82\n256,0.91,0.83\n")


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def boundary(frame):
    return run_analysis(ANALYSES.get("boundary"), frame)


def brute_force(ks, base, rl):
    """The crossover on the listed ks by a plain scan, and the mean over log2 k of (RL - base) by integrating the
    piecewise-linear (on log2 k) difference on a fine grid."""
    cross = next((k for k, b, r in zip(ks, base, rl) if b >= r), None)
    x = np.log2(np.asarray(ks, float))
    grid = np.linspace(x[0], x[-1], 400_001)
    d = np.interp(grid, x, np.asarray(rl, float) - np.asarray(base, float))
    return cross, float(d.mean())


# -- reading ---------------------------------------------------------------------------------------------------------
def test_a_published_wide_table_is_detected_and_read(tmp_path):
    path = write(tmp_path, "yue.csv", YUE)
    assert detect_format(path) == "passk_curve"
    f = read_run(path)
    assert f.format == "passk_curve" and f.raw == {} and (f.steps, f.last_step, len(f.rl_steps)) == (0, None, 0)
    base, rl = f.passk
    assert base == {"step": 0, "kind": "base", "n": 256, "curve": [0.312, 0.41, 0.5, 0.6, 0.7, 0.78, 0.84, 0.88, 0.91],
                    "ks": [1, 2, 4, 8, 16, 32, 64, 128, 256], "counts": None, "label": "base"}
    assert rl["kind"] == "current" and rl["step"] == 1 and rl["label"] == "rl" and rl["curve"][-1] == 0.83
    assert f.meta["units"] == "fractions" and f.meta["base_from"] == "name" and "base_guess" not in f.meta


def test_percent_tsv_without_a_base_name_takes_the_first_column_and_says_so(tmp_path):
    path = write(tmp_path, "t.tsv", "K\tQwen2.5-7B\tGRPO\n1\t31.2\t45.5\n4\t50.0\t58.0\n16\t70.0\t71.0\n")
    assert detect_format(path) == "passk_curve"
    f = read_run(path)
    base, rl = f.passk
    assert base["label"] == "Qwen2.5-7B" and rl["label"] == "GRPO" and base["ks"] == [1, 4, 16]
    assert base["curve"] == pytest.approx([0.312, 0.5, 0.7]) and rl["curve"] == pytest.approx([0.455, 0.58, 0.71])
    assert f.meta["units"].startswith("percent") and f.meta["base_from"] == "first column"
    assert "no column name contains 'base'" in f.meta["base_guess"] and "Qwen2.5-7B" in f.meta["base_guess"]


def test_percent_signs_and_pass_at_k_headers(tmp_path):
    f = read_run(write(tmp_path, "p.csv", "pass@k,pass@k (RL),pass@k (base)\npass@1,40%,30%\npass@8,60%,65%\n"))
    base, rl = f.passk
    assert base["label"] == "pass@k (base)" and rl["label"] == "pass@k (RL)" and base["ks"] == [1, 8]
    assert base["curve"] == pytest.approx([0.3, 0.65]) and "'%' signs" in f.meta["units"]


def test_rl_checkpoints_are_ordered_by_the_step_in_their_names(tmp_path):
    f = read_run(write(tmp_path, "c.csv", "k,rl_step_400,Base,rl_step_100,ckpt-200\n1,0.5,0.3,0.4,0.45\n"
                                          "2,0.6,0.4,0.5,0.55\n"))
    assert [(r["kind"], r["step"], r["label"]) for r in f.passk] == [
        ("base", 0, "Base"), ("current", 100, "rl_step_100"), ("current", 200, "ckpt-200"),
        ("current", 400, "rl_step_400")]
    assert f.meta["order"] == "by the step in the column names"
    g = read_run(write(tmp_path, "o.csv", "k,GRPO,PPO,base_model\n1,0.5,0.4,0.3\n2,0.6,0.5,0.4\n"))
    assert [(r["step"], r["label"]) for r in g.passk] == [(0, "base_model"), (1, "GRPO"), (2, "PPO")]
    assert g.meta["order"].startswith("table order")


def test_long_form_tables(tmp_path):
    rows = [(4, "rl", 0.58), (1, "base", 0.312), (1, "rl", 0.455), (4, "base", 0.5), (2, "rl", 0.52), (2, "base", 0.41)]
    for header in ("k,model,value", "k,name,pass@k"):
        path = write(tmp_path, "long.csv", header + "\n" + "".join(f"{k},{m},{v}\n" for k, m, v in rows))
        assert detect_format(path) == "passk_curve"
        f = read_run(path)
        base, rl = f.passk
        assert base["label"] == "base" and base["ks"] == [1, 2, 4] and base["curve"] == [0.312, 0.41, 0.5]
        assert rl["curve"] == [0.455, 0.52, 0.58] and f.meta["framework"] == "pass@k curve table (long)"


def test_training_logs_stay_csv_logs(tmp_path):
    # a step column makes it a training log even with a 'k' column; a long metric log too
    assert detect_format(write(tmp_path, "a.csv", "step,k,reward\n1,3,0.5\n2,3,0.6\n")) == "csv"
    assert detect_format(write(tmp_path, "b.csv", "step,name,value\n1,entropy,0.5\n")) == "csv"
    assert detect_format(write(tmp_path, "c.csv", "k,reward\n1,0.5\n")) == "csv"  # one numeric column: not a table


@pytest.mark.parametrize("text, problem, fix", [
    ("k,base,rl\n1,0.3,0.4\nmany,0.5,0.6\n", r"the k column 'k' holds 'many' \(line 3\)", "Give k as integers"),
    ("k,base,rl\n1,0.3,0.40\n2,0.5,0.35\n4,0.6,0.7\n", r"the curve 'rl' decreases in k \(0.4 at k = 1, 0.35 at k = 2\)",
     "Fix or drop that column"),
    ("k,base,rl\n1,0.3,40\n2,0.5,150\n", r"'rl' at k = 2 holds 150, outside \[0, 1\] \(fractions\) and \[0, 100\]",
     "Give pass@k as fractions or percentages"),
    ("k,base,rl\n1,0.3,0.4\n1,0.5,0.6\n", r"k = 1 is listed twice", "one row per k"),
])
def test_malformed_tables_get_one_clear_error(tmp_path, text, problem, fix):
    path = write(tmp_path, "bad.csv", text)
    assert detect_format(path) == "passk_curve"  # detected by its header: the error is about the table, not the format
    with pytest.raises(ValueError, match=problem) as err:
        read_run(path)
    assert fix in str(err.value)


def test_rounding_is_not_a_decreasing_curve(tmp_path):
    # published to 2 decimals: a 0.01 dip is within rounding; 0.02 is not
    assert read_run(write(tmp_path, "r.csv", "k,base,rl\n1,0.30,0.41\n2,0.40,0.40\n"))
    with pytest.raises(ValueError, match="decreases in k"):
        read_run(write(tmp_path, "r2.csv", "k,base,rl\n1,0.30,0.42\n2,0.40,0.40\n"))


# -- the boundary from curves ----------------------------------------------------------------------------------------
def test_boundary_on_planted_curves_is_exact(tmp_path):
    # RL - base = 0.3, 0.1, -0.1, -0.2 at k = 1, 2, 4, 8 (log2 k = 0, 1, 2, 3): the base reaches RL between 2 and 4
    # (log2 k = 1 + 0.1 / 0.2 = 1.5, k = 2^1.5); area = (0.2 + 0 - 0.15) / 3 = 1/60
    ks, base, rl = [1, 2, 4, 8], [0.2, 0.4, 0.6, 0.7], [0.5, 0.5, 0.5, 0.5]
    path = write(tmp_path, "planted.csv", "k,base,rl\n" + "".join(f"{k},{b},{r}\n" for k, b, r in zip(ks, base, rl)))
    r = boundary(read_run(path))
    v = r.to_json()
    assert r.status == "ok" and v["from_counts"] is False
    assert v["crossover_k"] == 4 and v["crossover_found"] and v["crossover_between"] == [2, 4]
    assert v["crossover_k_interp"] == pytest.approx(2 ** 1.5)
    assert v["area_between"] == pytest.approx(1 / 60)
    cross, area = brute_force(ks, base, rl)
    assert v["crossover_k"] == cross and v["area_between"] == pytest.approx(area, abs=1e-6)
    assert (v["pass1_base"], v["pass1_final"], v["passn_base"], v["passn_final"], v["n"]) == (0.2, 0.5, 0.7, 0.5, 8)
    assert v["pass1_diff"] == pytest.approx(0.3) and v["passn_diff"] == pytest.approx(-0.2)
    # no per-prompt counts: no intervals, no coverage, no pattern claimed
    for key in ("crossover_k_ci", "pass1_diff_ci", "passn_diff_ci", "pattern", "gained", "lost", "prompts"):
        assert v[key] is None, key
    assert "the base overtakes RL at k = 4 (between 2 and 4" in r.verdict
    assert "no interval: the table has no per-prompt counts" in r.verdict and "(-0.2)" in r.verdict
    for word in ("narrows the boundary", "expands the boundary:", "significant"):
        assert word not in r.verdict
    json.dumps(v, allow_nan=False)


def test_boundary_on_the_published_shape_against_brute_force(tmp_path):
    f = read_run(write(tmp_path, "yue.csv", YUE))
    v = boundary(f).to_json()
    base, rl = f.passk
    cross, area = brute_force(base["ks"], base["curve"], rl["curve"])
    assert v["crossover_k"] == cross == 32 and v["crossover_between"] == [16, 32]
    assert v["area_between"] == pytest.approx(area, abs=1e-6)
    # the interpolated crossover: where RL - base reaches 0 on the line between k = 16 and 32 (log2 k = 4, 5)
    d16, d32 = 0.71 - 0.7, 0.76 - 0.78
    assert v["crossover_k_interp"] == pytest.approx(2 ** (4 + d16 / (d16 - d32)))


def test_rl_ahead_at_every_k_has_no_crossover(tmp_path):
    f = read_run(write(tmp_path, "ahead.csv", "k,base,rl\n1,0.2,0.5\n4,0.4,0.6\n16,0.6,0.7\n64,0.7,0.75\n"))
    r = boundary(f)
    v = r.values
    assert v["crossover_k"] is None and not v["crossover_found"] and v["crossover_between"] is None
    assert v["crossover_k_interp"] is None and v["area_between"] > 0
    _, area = brute_force([1, 4, 16, 64], [0.2, 0.4, 0.6, 0.7], [0.5, 0.6, 0.7, 0.75])
    assert v["area_between"] == pytest.approx(area, abs=1e-6)
    assert "RL stays ahead of the base at every listed k up to 64" in r.verdict and "RL ahead on average" in r.verdict
    assert "no interval" in r.verdict and v["pattern"] is None


def test_adjacent_ks_give_an_exact_crossover_and_several_checkpoints_a_history(tmp_path):
    text = ("k,base,rl_step_100,rl_step_200,rl_step_300\n1,0.30,0.40,0.45,0.50\n2,0.45,0.50,0.50,0.52\n"
            "3,0.55,0.58,0.55,0.54\n4,0.62,0.65,0.60,0.56\n")
    r = boundary(read_run(write(tmp_path, "h.csv", text)))
    v = r.values
    assert v["crossover_over_time"] == [[100, None], [200, 3], [300, 3]]
    assert v["crossover_k"] == 3 and v["crossover_between"] is None and v["crossover_k_interp"] == 3.0
    for step, area in v["area_over_time"]:
        rl = {100: [0.40, 0.50, 0.58, 0.65], 200: [0.45, 0.50, 0.55, 0.60], 300: [0.50, 0.52, 0.54, 0.56]}[step]
        assert area == pytest.approx(brute_force([1, 2, 3, 4], [0.30, 0.45, 0.55, 0.62], rl)[1], abs=1e-6)
    assert v["evaluations"] == 3
    assert "over 3 RL curves (steps 100..300) the crossover k went none -> 3 -> 3" in r.verdict
    assert "between" not in r.verdict.split(":")[0]  # the crossover is exact: no bracket


def test_the_base_ahead_from_the_first_listed_k(tmp_path):
    r = boundary(read_run(write(tmp_path, "b.csv", "k,base,rl\n2,0.5,0.4\n8,0.7,0.6\n")))
    assert r.values["crossover_k"] == 2 and r.values["crossover_between"] is None
    assert r.values["pass1_base"] is None and r.values["area_between"] == pytest.approx(-0.1)
    assert "at or above RL from the first listed k (k = 2)" in r.verdict and "the base ahead on average" in r.verdict


# -- end to end ------------------------------------------------------------------------------------------------------
def test_rlscope_analyze_json_on_a_table(tmp_path, capsys):
    from rlscope.cli import main

    path = write(tmp_path, "yue.csv", YUE)
    assert main(["analyze", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["format"] == "passk_curve" and result["steps"] == 0
    b = result["analyses"]["boundary"]
    assert b["status"] == "ok" and b["crossover_k"] == 32 and b["from_counts"] is False
    for name, r in result["analyses"].items():
        if name == "boundary":
            continue
        assert r["status"] == "skipped" and r["reason"].startswith("not measurable"), name
    assert "none of the metrics the detectors read" in result["analyses"]["health"]["reason"]
    main(["analyze", str(path)])  # the verdict table too
    assert "boundary" in capsys.readouterr().out


def test_rlscope_report_on_a_table(tmp_path, capsys):
    pytest.importorskip("vl_convert")
    from rlscope.cli import main

    path = write(tmp_path, "yue.csv", YUE)
    out = tmp_path / "x.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out.exists() and "passk" in info["figures"]
    from rlscope.report import build_report

    spec = build_report([path], out=tmp_path / "y.html", keep_specs=True)["specs"]["passk"]
    points = []

    def collect(node):
        if isinstance(node, dict):
            if isinstance(node.get("values"), list):
                points.extend(p for p in node["values"] if "pass" in p)
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(spec)
    assert {p["k"] for p in points} == {1, 2, 4, 8, 16, 32, 64, 128, 256}  # at the listed ks, not 1..9
    assert {p["model"] for p in points} == {"base", "rl"} and math.isclose(
        next(p["pass"] for p in points if p["model"] == "rl" and p["k"] == 256), 0.83)
