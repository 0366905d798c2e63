"""The README stays true to the code: its file tree names exactly the package's modules, and every registered probe
has a row in its metrics table."""

from __future__ import annotations

import re

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def test_file_tree_lists_every_module_once():
    tree = _section("Files").split("```")[1]
    listed = re.findall(r"^  (\S+\.py)\s", tree, flags=re.M)
    actual = sorted(str(p.relative_to(ROOT / "src" / "rlscope")) for p in (ROOT / "src" / "rlscope").rglob("*.py"))
    assert sorted(listed) == actual
    assert len(listed) == len(set(listed))


def test_every_registered_probe_has_a_metrics_row():
    from rlscope.probes import PROBES

    table = _section("Metrics")
    for name in PROBES.names():
        assert f"`rlscope/{name}/" in table, f"no metrics row for probe {name!r}"


def test_the_alias_table_is_the_code_table():
    from rlscope.analysis.aliases import ALIASES

    table = _section("Offline analysis")
    for name, (meaning, patterns) in ALIASES.items():
        row = next((line for line in table.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, f"no alias row for {name!r}"
        assert meaning in row and all(f"`{p}`" in row for _, p in patterns), name


def test_every_analysis_has_a_row():
    from rlscope.analysis.analyses import ANALYSES

    table = _section("Offline analysis")
    for name in ANALYSES.names():
        assert f"| `{name}` |" in table, f"no row for analysis {name!r}"
