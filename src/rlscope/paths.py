"""Where the recipes that ship with rlscope are: inside the package (``rlscope/recipes``, read with
``importlib.resources``, so a wheel has them too; the repository's top-level ``recipes/`` is a link to that folder),
and how ``--config`` finds one: a path, else a shipped recipe's name (``tiny_dapo``) or its repository path
(``recipes/tiny_dapo.yaml``) from any directory."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def recipes_dir() -> Path:
    """The folder of the shipped recipes (``accelerate/`` inside it holds the accelerate configs)."""
    path = Path(str(resources.files("rlscope") / "recipes"))
    if not (path / "tiny_dapo.yaml").is_file():
        raise FileNotFoundError(f"rlscope's shipped recipes are missing from {path}: reinstall rlscope (the wheel "
                                f"carries them as package data), or pass --config PATH")
    return path


def shipped() -> list[Path]:
    """The shipped recipes, by name."""
    return sorted(recipes_dir().glob("*.yaml"))


def recipe(name: str) -> Path:
    path = recipes_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.exists():
        from rlscope.errors import MissingInput

        raise MissingInput(f"no recipe {name!r}; the recipes that ship with rlscope: {[p.stem for p in shipped()]} "
                           f"(`rlscope recipes` lists them with their launch lines)")
    return path


def resolve_config(value: str) -> Path:
    """``--config VALUE``: the file when it exists; otherwise the shipped recipe it names -- ``tiny_dapo``,
    ``tiny_dapo.yaml`` or ``recipes/tiny_dapo.yaml`` (the launch lines' form, which works from a checkout) -- so the
    launch lines work from a wheel in any directory; otherwise the path as given (reading it then says it is
    missing and lists the shipped ones)."""
    path = Path(value)
    if path.is_file():
        return path
    parts = path.parts
    if len(parts) == 1 or (len(parts) >= 2 and parts[-2] in ("recipes", "accelerate")):
        name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
        sub = ("accelerate",) if len(parts) >= 2 and parts[-2] == "accelerate" else ()
        try:
            candidate = recipes_dir().joinpath(*sub, name)
        except FileNotFoundError:
            return path
        if candidate.is_file():
            return candidate
    return path


def launch_lines(path: Path) -> list[str]:
    """The launch lines a recipe's header comment gives (``# Launch:  ...`` and ``#     or:  ...``)."""
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        body = line.lstrip("#").strip()
        for tag in ("Launch:", "or:"):
            if body.startswith(tag):
                out.append(body[len(tag):].strip())
    return out
