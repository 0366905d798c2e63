"""The one Registry and the one unknown-name message: duplicates raise, plugin files register themselves, and every
lookup (probe, schedule, task, options, recipe keys) fails the same way, naming the closest match."""

from __future__ import annotations

import re
import sys

import pytest

from rlscope.registry import Registry, UnknownName, check_names

MESSAGE = re.compile(r"^unknown (?P<kind>[\w ]+) '(?P<name>[^']+)'(?P<where> .+?)?\. Did you mean '(?P<close>[^']+)'\? ")


def test_registering_a_name_twice_raises():
    reg = Registry("widget")
    reg.register("a", 1)
    reg.register("a", 1)  # the same object again (a module imported twice) is fine
    with pytest.raises(ValueError, match="widget 'a' is registered twice"):
        reg.register("a", 2)

    @reg.register("b")
    def b():
        pass

    assert reg.get("b") is b and reg.names() == ["a", "b"] and "b" in reg


def test_the_real_registries_refuse_a_second_probe_schedule_or_task_of_the_same_name():
    from rlscope.probes import PROBES, register
    from rlscope.tasks import TASKS
    from rlscope.trainers.schedules import SCHEDULES, Schedule, schedule

    with pytest.raises(ValueError, match="probe 'entropy' is registered twice"):
        register("entropy", source="tokens", inputs=("mask",), outputs=("x",))(lambda batch, state: {})
    assert PROBES.get("entropy").fn.__name__ == "entropy_stats"

    class Relift(Schedule):
        name = "relift"

    with pytest.raises(ValueError, match="schedule 'relift' is registered twice"):
        schedule(Relift)
    with pytest.raises(ValueError, match="task 'chainsum' is registered twice"):
        TASKS.register("chainsum", object)
    assert SCHEDULES.get("relift") is not Relift


def test_a_plugin_file_registers_itself(tmp_path, monkeypatch):
    """Adding a file to the registry's package is the only step: nothing imports it by name."""
    pkg = tmp_path / "fakeplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from rlscope.registry import Registry\nITEMS = Registry('gadget', "
                                     "package='fakeplugins')\n")
    (pkg / "alpha.py").write_text("from fakeplugins import ITEMS\nITEMS.register('alpha', 'A')\n")
    (pkg / "beta.py").write_text("from fakeplugins import ITEMS\n@ITEMS.register('beta')\ndef beta():\n    return 'B'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import fakeplugins

        assert fakeplugins.ITEMS.names() == ["alpha", "beta"] and fakeplugins.ITEMS.get("beta")() == "B"
    finally:
        for name in [m for m in sys.modules if m.startswith("fakeplugins")]:
            del sys.modules[name]


def test_lookups_from_many_threads_at_once_see_every_entry(tmp_path, monkeypatch):
    """The first lookups of a registry from several threads at once (ranks simulated as threads, as in ``rlscope bench
    gather``) wait for its package's import instead of seeing the entries registered so far."""
    import threading

    pkg = tmp_path / "slowplugins"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from rlscope.registry import Registry\nITEMS = Registry('gadget', "
                                     "package='slowplugins')\n")
    (pkg / "a_first.py").write_text("from slowplugins import ITEMS\nITEMS.register('first', 1)\n")
    (pkg / "b_slow.py").write_text("import time\nfrom slowplugins import ITEMS\ntime.sleep(0.3)\n"
                                   "ITEMS.register('slow', 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import slowplugins

        found, errors = [], []

        def look():
            try:
                found.append(slowplugins.ITEMS.get("slow"))
            except Exception as exc:  # noqa: BLE001 -- collected, asserted below
                errors.append(exc)

        threads = [threading.Thread(target=look) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and found == [2] * 8
    finally:
        for name in [m for m in sys.modules if m.startswith("slowplugins")]:
            del sys.modules[name]


def test_every_probe_file_is_registered_without_an_import_list():
    import ast
    from pathlib import Path

    import rlscope.probes as probes

    here = Path(probes.__file__).parent
    files = {p.stem for p in here.glob("*.py") if "@register(" in p.read_text() and p.stem != "__init__"}
    assert {probes.PROBES.get(name).fn.__module__.rsplit(".", 1)[-1] for name in probes.PROBES.names()} == files
    imported = {n.module for n in ast.walk(ast.parse(Path(probes.__file__).read_text()))
                if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.startswith("rlscope.probes")}, "probes/__init__ imports its probe files"


def _lookup_failures():
    from rlscope.callbacks import Observatory
    from rlscope.probes import get_probe
    from rlscope.tasks import get_task
    from rlscope.trainers.schedules import get_schedule

    yield "probe", "entropi", "entropy", lambda: get_probe("entropi")
    yield "probe", "entropi", "entropy", lambda: Observatory(probes=("entropi",))
    yield "schedule", "relif", "relift", lambda: get_schedule("relif")
    yield "task", "chainsun", "chainsum", lambda: get_task("chainsun")
    yield "parameter", "bufer_size", "buffer_size", lambda: get_schedule("relift", bufer_size=3)
    yield "option", "sed", "seed", lambda: get_task("chainsum", sed=1)
    yield "option", "n_heldot", "n_heldout", lambda: get_task("gsm8k", n_heldot=3)  # _MathTask no longer drops it
    yield "option", "evry", "every", lambda: Observatory(probes={"weights": {"evry": 5}})
    yield "option", "max_prompt", "max_prompts", lambda: Observatory(probes={"passk": {"task": "chainsum",
                                                                                        "max_prompt": 3}})


@pytest.mark.parametrize("case", list(range(9)))
def test_every_unknown_name_gets_the_same_message(case):
    kind, name, close, call = list(_lookup_failures())[case]
    with pytest.raises(UnknownName) as info:
        call()
    err = info.value
    assert isinstance(err, KeyError) and isinstance(err, ValueError)  # either except clause catches it
    m = MESSAGE.match(str(err))
    assert m, str(err)
    assert (m["kind"], m["name"], m["close"]) == (kind, name, close)
    assert err.suggestion == close


def test_message_lists_what_is_known_and_says_nothing_when_nothing_is_close():
    with pytest.raises(UnknownName, match=r"^unknown probe 'zzz'\. Known probes: a, b\.$"):
        check_names("probe", ["zzz"], ["b", "a"])
    err = UnknownName("recipe key", "x", [f"k{i}" for i in range(100)], listing="see --help")
    assert str(err) == "unknown recipe key 'x'. see --help."


def test_recipe_keys_and_schedules_use_the_same_message(tmp_path):
    from conftest import RECIPES
    from rlscope.recipe import parse_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "tiny_dapo.yaml").read_text() + "probe_evry: {grad: 1}\n")
    with pytest.raises(UnknownName) as info:
        parse_recipe(["--config", str(bad)])
    assert MESSAGE.match(str(info.value))["close"] == "probe_every"
    with pytest.raises(UnknownName, match=r"^unknown probe 'gard'\. Did you mean 'grad'\?"):
        parse_recipe(["--config", str(RECIPES / "tiny_dapo.yaml"), "--probe_every", '{"gard": 1}'])
