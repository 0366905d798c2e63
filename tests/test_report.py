"""rlscope report: the page shows the analyses' saved numbers, escapes model text, compares runs, and renders in a real
browser (headless Chromium) from file:// with no console errors."""

import json
import os
from html import escape as html_escape
import shutil
import time

import pytest

from rlscope.analysis.synthetic import write_synthetic_run

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>"]


def _hostile_rollouts(run_dir):
    """Put the hostile completions first in the first step's rollouts (the browser's first block shows them)."""
    path = run_dir / "rollouts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    first = min(r["step"] for r in rows)
    evil = [{**rows[0], "step": first, "completion": text, "prompt": "1+1=" + text} for text in HOSTILE]
    path.write_text("".join(json.dumps(r) + "\n" for r in evil + rows))


def _specs(html: str) -> dict:
    start = html.index('<script type="application/json" id="rlscope-specs">') + len(
        '<script type="application/json" id="rlscope-specs">')
    return json.loads(html[start:html.index("</script>", start)])


def _data(spec) -> list[dict]:
    """Every inline data row of a Vega-Lite spec (any nesting)."""
    out = []
    if isinstance(spec, dict):
        if "values" in spec and isinstance(spec["values"], list):
            out += spec["values"]
        for v in spec.values():
            out += _data(v)
    elif isinstance(spec, list):
        for v in spec:
            out += _data(v)
    return out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    run = write_synthetic_run(tmp_path_factory.mktemp("r") / "syn", steps=1500, metrics=30, rollout_every=10,
                              completions=16, probe_every=100)
    _hostile_rollouts(run)
    return run


def test_the_page_draws_the_saved_numbers_and_escapes_model_text(synthetic, tmp_path):
    from rlscope.report import build_report

    info = build_report([synthetic], out=tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert info["bytes"] < 5e6 and "http://" not in html.split("<script>")[0] and "<link" not in html
    # every figure drew (the synthetic run has every input) and the page declares how many
    assert info["figures"] == ["dynamics", "entropy_law", "length", "behavior", "entropy_bands", "passk", "weights",
                               "health"]
    assert f'<meta name="rlscope-figures" content="{len(info["figures"])}">' in html
    analysis = json.loads((synthetic / "analysis" / "analysis.json").read_text())["analyses"]
    specs = _specs(html)
    # the length figure's fit is the two_stage analysis's (planted break at 600), with its interval shaded
    rows = _data(specs["fig-length"])
    knots = [[r["step"], r["value"]] for r in rows if set(r) == {"run", "step", "value"} and r["step"] in
             {k[0] for k in analysis["two_stage"]["fit_knots"]}]
    assert analysis["two_stage"]["found"] and len(analysis["two_stage"]["fit_knots"]) == 3
    assert [k for k in analysis["two_stage"]["fit_knots"] if k in knots] == analysis["two_stage"]["fit_knots"]
    ci = analysis["two_stage"]["break_step_ci"]
    assert {"run": "syn", "from": ci[0], "to": ci[1], "break": analysis["two_stage"]["break_step"]} in rows
    # the entropy-law scatter is the analysis's pairs
    law = [r for r in _data(specs["fig-entropy_law"]) if "performance" in r]
    assert [[r["step"], r["entropy"], r["performance"]] for r in law] == analysis["entropy_law"]["points"]
    # the verdicts are on the page, escaped like everything else
    assert html_escape(analysis["aha"]["verdict"]) in html
    for text in HOSTILE:
        assert text not in html  # neither in the rollout browser nor in a prompt
        assert html_escape(text) in html


def test_a_saved_analysis_is_reused_only_from_the_same_code(synthetic, tmp_path):
    from rlscope.report import build_report

    saved = synthetic / "analysis" / "analysis.json"
    build_report([synthetic], out=tmp_path / "a.html")
    result = json.loads(saved.read_text())
    result["analyses"]["aha"]["verdict"] = "MARKER"
    saved.write_text(json.dumps(result))
    build_report([synthetic], out=tmp_path / "b.html")
    assert "MARKER" in (tmp_path / "b.html").read_text()  # fresh and from this code: reused
    result["code"] = "other"
    saved.write_text(json.dumps(result))
    build_report([synthetic], out=tmp_path / "c.html")
    assert "MARKER" not in (tmp_path / "c.html").read_text()  # other analysis code: recomputed


def test_a_figure_the_run_cannot_draw_says_why(tmp_path):
    from rlscope.report import build_report

    csv = tmp_path / "run.csv"
    csv.write_text("step,reward,completion_length\n" + "".join(f"{s},{0.1 + s / 100},{200 - s}\n" for s in range(40)))
    info = build_report([csv], out=tmp_path / "r.html")
    assert info["figures"] == ["dynamics", "length", "health"]
    html = (tmp_path / "r.html").read_text()
    assert "not measurable: the run has no pass@k evaluations" in info["not_drawn"]["passk"]
    assert html_escape(info["not_drawn"]["passk"]) in html and "not measurable: the run has no rollout text" in html


def test_compare_overlays_runs_with_their_verdicts_side_by_side(synthetic, tmp_path):
    from rlscope.report import build_report

    other = write_synthetic_run(tmp_path / "other", steps=1200, metrics=30, rollout_every=10, completions=16,
                                probe_every=100, seed=3)
    info = build_report([synthetic, other], out=tmp_path / "c.html", labels=["dapo", "clip-cov"])
    html = (tmp_path / "c.html").read_text()
    assert info["runs"] == ["dapo", "clip-cov"] and "rlscope compare: dapo, clip-cov" in html
    for fig in ("fig-dynamics", "fig-length", "fig-passk"):
        assert {r.get("run") for r in _data(_specs(html)[fig])} >= {"dapo", "clip-cov"}, fig
    block = html[html.index("<h2>Verdicts</h2>"):html.index("<h2>Figures</h2>")]
    assert block.count('<span class="run">dapo:</span>') >= 8 and block.count('<span class="run">clip-cov:</span>') >= 8


def test_report_cli_prints_json_last(synthetic, tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "rlscope.cli", "report", str(synthetic), "--out", str(tmp_path / "x.html")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["report"] == str(tmp_path / "x.html") and info["bytes"] > 0
    assert p.stdout.splitlines()[0].startswith("report: ")


# -- in a real browser ------------------------------------------------------------------------------------------------
BROWSER_PACKAGES = "the Debian packages chromium and chromium-driver (apt-get install chromium chromium-driver)"


def _driver():
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        if os.environ.get("RLSCOPE_REQUIRE_BROWSER"):
            pytest.fail(f"RLSCOPE_REQUIRE_BROWSER is set but no headless browser was found: install {BROWSER_PACKAGES}")
        pytest.skip(f"no headless browser: install {BROWSER_PACKAGES}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1200,1600"):
        options.add_argument(arg)
    options.binary_location = chrome
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow
def test_the_report_of_a_real_tiny_run_renders_in_chromium(tmp_path):
    """A real SFT -> DAPO run with pass@k, weights and token dumps; hostile completions put in its rollouts."""
    from helpers import run_recipe
    from selenium.common.exceptions import NoAlertPresentException

    from rlscope.report import build_report

    run_recipe(tmp_path, "tiny_sft_then_dapo.yaml", "--sft_steps", "3", "--sft_batch_size", "8", "--max_steps", "6",
               "--run_name", "b", "--report_to", "none", "--eval_heldout", "false", "--dynamic_sampling", "false",
               "--probe_every", '{"passk": 3, "weights": 3}',
               "--probe_options", '{"passk": {"n": 2, "max_prompts": 3}, "tokens": {"dump_every": 2}}')
    run = tmp_path / "b"
    _hostile_rollouts(run)
    info = build_report([run])
    page = run / "analysis" / "report.html"
    assert info["report"] == str(page)
    html = page.read_text()
    assert 'class="tok"' in html  # the dumped steps' tokens, shaded by entropy
    declared = int(html.split('<meta name="rlscope-figures" content="')[1].split('"')[0])
    assert declared == len(info["figures"]) >= 5
    d = _driver()
    try:
        d.get(page.as_uri())
        for _ in range(150):
            state = d.execute_script("return document.body.dataset.rendered")
            if state:
                break
            time.sleep(0.2)
        assert state == str(declared), f"charts rendered: {state!r} of {declared}"
        drawn = d.execute_script("return [...document.querySelectorAll('.rlscope-figure')]"
                                 ".filter(e => e.querySelector('svg .mark-group, svg path, svg rect')).length")
        assert drawn == declared
        errors = [e for e in d.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert not errors, errors
        with pytest.raises(NoAlertPresentException):
            d.switch_to.alert.text  # noqa: B018  (no dialog fired)
        assert d.execute_script("return document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
        assert not d.execute_script("return [...document.scripts].some(s => s.textContent.includes('alert(1)'))")
        text = d.execute_script("return document.body.innerText")
        assert all(t in text for t in HOSTILE)  # shown as text
    finally:
        d.quit()
