"""`medallion init NAME`: a new project that runs at once: a pipeline module, sample landing data, settings, a
test and a README."""

from __future__ import annotations

import re
from importlib.resources import files
from importlib.resources.abc import Traversable
from importlib.util import find_spec
from pathlib import Path
from string import Template

import click
from rich.markup import escape

from engine.cli.common import console, reported
from engine.errors import EngineError

TEMPLATES = "templates/init"
ROOT = "lakehouse"
"""The project's storage root, under its folder."""


def package_name(name: str) -> str:
    """The Python package of a project called `name`: lower case, runs of other characters than letters,
    digits and `_` made one `_`.

    Raises:
        EngineError: nothing of `name` makes an identifier, or a module of that name is importable already (the
            project's package would hide it).
    """
    package = re.sub(r"\W+", "_", name.lower()).strip("_")
    if not package or package[0].isdigit():
        raise EngineError(f"cannot name a Python package after `{name}`: give a name starting with a letter")
    if find_spec(package) is not None:
        raise EngineError(f"a module `{package}` is installed already and the project's package would hide it; "
                          "choose another NAME")
    return package


def scaffold(target: Path) -> str:
    """Write a new project into `target` (absent or empty); returns its package's name.

    Raises:
        EngineError: `target` is a file, or a folder that is not empty.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise EngineError(f"`{target}` already exists and is not an empty folder; choose another NAME")
    package = package_name(target.resolve().name)
    values = {"name": target.resolve().name, "package": package}
    _copy(files("engine.cli").joinpath(TEMPLATES), target, values, {"package": package, "root": ROOT})
    return package


def _copy(source: Traversable, target: Path, values: dict[str, str], folders: dict[str, str]) -> None:
    """Copy the templates under `source` to `target`: `*.tmpl` files rendered with `values` (without the
    suffix), the others as they are; the top folders named in `folders` renamed."""
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        name = folders.get(item.name, item.name)
        if item.is_dir():
            _copy(item, target / name, values, {})
        elif name.endswith(".tmpl"):
            (target / name.removesuffix(".tmpl")).write_text(Template(item.read_text()).substitute(values))
        else:
            (target / name).write_bytes(item.read_bytes())


@click.command()
@click.argument("name", type=click.Path(file_okay=False, path_type=Path))
@reported
def init(name: Path) -> None:
    """Create the project NAME: a bronze -> silver -> gold pipeline over sample JSON-lines orders, a medallion.yaml
    keeping the tables in the project, a test of the pipeline, and a README; runs as it is."""
    package = scaffold(name)
    console.print(f"created {escape(str(name))}; to run it, test it and see its tables:")
    for command in (f"cd {name}", f"medallion run {package}.pipeline:pipeline", "python -m pytest",
                    "medallion status"):
        console.print(f"  {escape(command)}", soft_wrap=True)
