"""The report page: one self-contained HTML file (styles, Vega/Vega-Lite/vega-embed and every chart's data inline;
opens from disk with no network). Model text is escaped wherever it appears; chart specs are embedded as JSON with
``<``, ``>`` and ``&`` written as unicode escapes, so no text can close a script element.
"""

from __future__ import annotations

import html
import json

QUESTIONS = [  # (question, analyses that answer it)
    ("Did it go through two stages (length shrinks, then grows)?", ("two_stage",)),
    ("Is there an aha step?", ("aha",)),
    ("Does performance follow the entropy law, and what ceiling does it forecast?", ("entropy_law", "ceiling")),
    ("How much exploration is left?", ("entropy_dynamics",)),
    ("Is RL expanding the capability boundary or sharpening inside it?", ("boundary",)),
    ("Do the weights rotate or scale; one direction or many?", ("weight_dynamics",)),
    ("Do planning phrases take over?", ("planning_tokens",)),
    ("Is the run healthy?", ("health",)),
]

STYLE = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 4px} .sub{color:#666;font-size:13px}
.verdicts{display:grid;grid-template-columns:1fr;gap:8px}
.q{background:#fff;border:1px solid #e3e3e3;border-left:5px solid #bbb;border-radius:6px;padding:8px 12px}
.q.ok{border-left-color:#4daf4a} .q.info{border-left-color:#377eb8} .q.warn{border-left-color:#ff7f00}
.q.crit{border-left-color:#e41a1c} .q.skipped{border-left-color:#ccc;color:#777}
.q b{display:block;font-size:14px;margin-bottom:2px}
.q p{margin:2px 0} .run{font-weight:600;color:#444}
table{border-collapse:collapse;font-size:13px;width:100%;background:#fff}
td,th{border:1px solid #e3e3e3;padding:4px 6px;vertical-align:top;text-align:left}
.fig{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:8px;margin:8px 0;overflow-x:auto}
.missing{color:#777;font-style:italic}
details{margin:4px 0} summary{cursor:pointer;font-weight:600}
pre.completion{white-space:pre-wrap;word-break:break-word;margin:0;font:12px/1.4 ui-monospace,Menlo,monospace}
.tok{border-radius:2px}
"""


EMBED = """
const specs = JSON.parse(document.getElementById('rlscope-specs').textContent);
const jobs = Object.entries(specs).map(([id, spec]) =>
  vegaEmbed('#' + id, spec, {actions: false, renderer: 'svg'}));
Promise.all(jobs).then(() => { document.body.dataset.rendered = String(jobs.length); })
  .catch(e => { document.body.dataset.rendered = 'error'; console.error(e); });
"""  # renders every chart; the page's body says when all have (data-rendered = their count)


def _json_for_script(obj) -> str:
    return json.dumps(obj).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


def verdict_block(runs) -> str:
    """One short paragraph per question: the verdicts with their numbers, or "not measurable: <reason>"; the box is
    coloured by the health severity (the health question) or grey when nothing could be measured."""
    parts = []
    for question, names in QUESTIONS:
        level, lines = "skipped", []
        for run in runs:
            who = f'<span class="run">{_esc(run.label)}:</span> ' if len(runs) > 1 else ""
            for name in names:
                a = (run.result.get("analyses") or {}).get(name) or {}
                if a.get("status") == "ok":
                    lines.append(f"<p>{who}{_esc(a.get('verdict'))}</p>")
                    level = _worse(level, a.get("severity", "ok"))
                else:
                    reason = str(a.get("reason") or "not computed")
                    reason = reason if reason.startswith("not measurable") else f"not measurable: {reason}"
                    lines.append(f'<p class="missing">{who}{_esc(name)}: {_esc(reason)}</p>')
        parts.append(f'<div class="q {level}"><b>{_esc(question)}</b>{"".join(lines)}</div>')
    return '<div class="verdicts">' + "".join(parts) + "</div>"


def _worse(a: str, b: str) -> str:
    order = ["skipped", "ok", "info", "warn", "crit"]
    b = b if b in order else "ok"
    return a if order.index(a) >= order.index(b) else b


def rollout_browser(runs, max_steps: int = 12, per_step: int = 6) -> str:
    """Sample completions per step with reward, advantage, length and entropy (all text escaped); where per-token
    entropies were dumped, those completions token by token, each token shaded by its entropy."""
    out = []
    for run in runs:
        head = f"<h3>{_esc(run.label)}</h3>" if len(runs) > 1 else ""
        rows = run.frame.rollout_rows(max_steps=max_steps, per_step=per_step)
        by_step: dict[int, list[dict]] = {}
        for r in rows:
            by_step.setdefault(int(r["step"]), []).append(r)
        blocks = []
        for step, items in sorted(by_step.items()):
            trs = "".join("<tr>" + "".join(f"<td>{_esc(_num(r.get(k)))}</td>" for k in
                                           ("reward", "advantage", "length", "entropy_mean"))
                          + f'<td>{_esc(r.get("prompt", ""))}</td><td><pre class="completion">'
                          f'{_esc(r.get("completion", ""))}</pre></td></tr>' for r in items)
            blocks.append(f"<details{' open' if not blocks else ''}><summary>step {step} ({len(items)} completions)</summary><table><tr><th>reward"
                          "</th><th>advantage</th><th>length</th><th>entropy</th><th>prompt</th><th>completion</th>"
                          f"</tr>{trs}</table></details>")
        if not blocks:
            blocks.append('<p class="missing">not measurable: the run has no rollout text</p>')
        views: dict[int, list[dict]] = {}
        for (step, _), view in sorted(run.token_text.items()):
            views.setdefault(step, []).append(view)
        for step, items in views.items():
            trs = "".join(f"<tr><td>{_esc(_num(v['reward']))}</td><td>{_esc(_num(v['advantage']))}</td>"
                          f'<td><pre class="completion">{_shade(v["tokens"])}</pre></td></tr>' for v in items)
            blocks.append(f"<details><summary>step {step}: tokens shaded by entropy</summary><table><tr><th>reward"
                          f"</th><th>advantage</th><th>completion (darker = higher entropy)</th></tr>{trs}</table>"
                          "</details>")
        out.append(head + "".join(blocks))
    return "".join(out)


def _shade(tokens: list[tuple[str, float]]) -> str:
    """Tokens with a background whose strength is the token's entropy (the highest in the completion darkest)."""
    top = max((h for _, h in tokens), default=0.0) or 1.0
    return "".join(f'<span class="tok" title="H={h:.2f}" style="background:rgba(230,85,13,{min(h / top, 1):.2f})">'
                   f"{_esc(t)}</span>" for t, h in tokens)


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render(runs, figures: list[tuple[str, str, str, dict | None, str | None]], bundle: str, title: str,
           meta: dict) -> str:
    """The page. ``figures``: (name, title, question, Vega-Lite spec or None, reason when None)."""
    drawn = [(n, t, q, s) for n, t, q, s, _ in figures if s is not None]
    specs = {f"fig-{n}": s for n, _, _, s in drawn}
    sections = []
    for name, ftitle, question, spec, reason in figures:
        body = f'<div id="fig-{name}" class="rlscope-figure"></div>' if spec is not None else \
            f'<p class="missing">{_esc(reason)}</p>'
        sections.append(f'<h3>{_esc(ftitle)}</h3><p class="sub">{_esc(question)}</p><div class="fig">{body}</div>')
    runs_line = ", ".join(f"{_esc(r.label)} ({_esc(r.result.get('format'))}, {r.result.get('rl_steps')} RL steps)"
                          for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="rlscope-figures" content="{len(drawn)}">
<title>{_esc(title)}</title><style>{STYLE}</style>
<script>{bundle}</script></head>
<body><main>
<h1>{_esc(title)}</h1><p class="sub">{runs_line} &middot; rlscope {_esc(meta.get('version', ''))} &middot;
{_esc(meta.get('created', ''))}</p>
<h2>Verdicts</h2>{verdict_block(runs)}
<h2>Figures</h2>{''.join(sections)}
<h2>Rollouts</h2><p class="sub">Sampled completions per step; tokens shaded by entropy where per-token values were
dumped (the tokens source's <code>dump_every</code>).</p>{rollout_browser(runs)}
</main>
<script type="application/json" id="rlscope-specs">{_json_for_script(specs)}</script>
<script>{EMBED}</script>
</body></html>
"""
