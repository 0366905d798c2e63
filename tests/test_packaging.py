"""The wheel carries what an installed rlscope needs: the recipes and accelerate configs ship inside the package
(one copy: the repository's recipes/ links to it), --config finds a shipped recipe by name from any directory, and
`rlscope recipes` lists them with their launch lines. (CI also builds the wheel and runs it from a fresh venv:
scripts/wheel_smoke.sh.)"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from pathlib import Path

import pytest

from rlscope import paths
from rlscope.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_repository_recipes_folder_is_the_package_data():
    assert (ROOT / "recipes").resolve() == paths.recipes_dir().resolve() == (ROOT / "src/rlscope/recipes").resolve()
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["rlscope"]
    shipped = [p.relative_to(ROOT / "src/rlscope").as_posix() for p in (ROOT / "src/rlscope/recipes").rglob("*")
               if p.is_file()]
    assert shipped and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in shipped), (shipped, globs)


@pytest.mark.parametrize("given", ["tiny_dapo", "tiny_dapo.yaml", "recipes/tiny_dapo.yaml"])
def test_config_finds_a_shipped_recipe_from_any_directory(given, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.resolve_config(given) == paths.recipes_dir() / "tiny_dapo.yaml"
    assert paths.resolve_config("recipes/accelerate/single.yaml") == paths.recipes_dir() / "accelerate/single.yaml"
    (tmp_path / "tiny_dapo.yaml").write_text("task: chainsum\n")  # a file of the user's wins
    assert paths.resolve_config("tiny_dapo.yaml") == Path("tiny_dapo.yaml")
    assert paths.resolve_config("elsewhere/nope.yaml") == Path("elsewhere/nope.yaml")


def test_a_recipe_name_that_is_not_shipped_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "tiny_dpo"]) == 2
    err = capsys.readouterr().err
    assert "recipe tiny_dpo does not exist" in err and "tiny_dapo.yaml" in err


def test_rlscope_recipes_lists_every_shipped_recipe_with_its_launch_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # not a checkout: the launch lines name the real folder
    assert main(["recipes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    names = {r["name"] for r in out["recipes"]}
    assert names == {p.stem for p in (ROOT / "src/rlscope/recipes").glob("*.yaml")}
    tiny = next(r for r in out["recipes"] if r["name"] == "tiny_dapo")
    assert tiny["launch"] and all(str(paths.recipes_dir()) in line for line in tiny["launch"])
    assert len(out["accelerate_configs"]) == 4
