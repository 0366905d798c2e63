"""mkdocs hooks: the pages' generated parts come from the code at build time, so they cannot drift from it.

``<!-- rlscope:probes -->`` -- every registered probe (``rlscope probes``): source, cost, default cadence, inputs,
options, the metrics it writes and its docstring's first sentence. ``<!-- rlscope:recipes -->`` -- every shipped
recipe (``rlscope recipes``) with its launch lines.
"""

from __future__ import annotations

import html


def _cell(text: str) -> str:
    return html.escape(str(text)).replace("|", "&#124;").replace("\n", " ")


def _definition(fn) -> list[str]:
    """The probe module's docstring -- what it measures, the formula, the paper -- as a collapsed block."""
    import inspect
    import textwrap

    doc = inspect.getdoc(inspect.getmodule(fn)) or ""
    if not doc:
        return []
    body = textwrap.indent(doc.replace("``", "`"), "    ")
    return [f'??? abstract "Definition, formula and paper (`{fn.__module__}`)"', "", body, ""]


def probes_table() -> str:
    """One section per probe: what it measures (its docstring), where its inputs come from, cost, cadence, options
    and the metrics it writes."""
    from rlscope.probes import PROBES

    out = []
    for _, probe in PROBES.items():
        d = probe.describe()
        opts = ", ".join(f"`{k}={v!r}`" for k, v in d["options"].items()) or "none"
        out += [f"## {d['name']}", "", _cell(d["doc"]), "", *_definition(probe.fn),
                "| source | cost | default cadence | inputs |", "|---|---|---|---|",
                f"| {d['source']} | {d['cost']} | {_cell(d['cadence'])} | {', '.join(d['inputs'])} |", "",
                f"**Options:** {_cell(opts)}", "",
                f"**Metrics:** {', '.join(f'`{m}`' for m in d['metrics'])}", ""]
    return "\n".join(out)


def recipes_list() -> str:
    from rlscope import paths

    out = []
    for path in paths.shipped():
        text = path.read_text()
        about = text.splitlines()[0].lstrip("# ").strip() if text.startswith("#") else ""
        out.append(f"- **`{path.name}`** -- {_cell(about)}")
        out.extend(f"    - `{line}`" for line in paths.launch_lines(path))
    return "\n".join(out)


GENERATED = {"<!-- rlscope:probes -->": probes_table, "<!-- rlscope:recipes -->": recipes_list}


def on_page_markdown(markdown: str, page, config, files) -> str:
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
