"""Where the bundled recipes are (the repository's ``recipes/`` folder, next to ``src/``)."""

from __future__ import annotations

from pathlib import Path


def recipes_dir() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "recipes" / "tiny_dapo.yaml").exists():
            return parent / "recipes"
    raise FileNotFoundError("rlscope's recipes/ folder was not found next to the package; pass --config PATH")


def recipe(name: str) -> Path:
    path = recipes_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        known = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
        from rlscope.errors import MissingInput

        raise MissingInput(f"no recipe {name!r}; bundled recipes: {known}")
    return path
