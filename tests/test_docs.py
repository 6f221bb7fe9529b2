"""The documentation runs: the generated references (`docs/cli.md`, `docs/configuration.md`) are current, and
every code snippet of README.md and docs/*.md does what it says.

Per Markdown file, in order: ```python blocks run in one namespace; lines of ```sh / ```bash / ```console
blocks that start with `medallion ` run through click's CliRunner and must exit 0; ```yaml blocks parse (and
when every top-level key is a settings section, validate as `Settings`). The working folder of a file is a
fresh temporary folder holding `lakehouse/`, a copy of the retail build (`medallion demo --scale 0.05`), and
`features/`, the feature repository; a block preceded by `<!-- not-run: REASON -->` is skipped.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from engine.docgen import REGENERATE, render_cli, render_config
from tests.conftest import RetailBuild

PROJECT = Path(__file__).resolve().parents[1]
DOCS = PROJECT / "docs"
FILES = [PROJECT / "README.md", *sorted(DOCS.glob("*.md"))]
SHELL = {"sh", "bash", "console", "shell"}
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<lang>[\w-]*)\s*$")


@dataclass(frozen=True)
class Snippet:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int
    lang: str
    code: str
    not_run: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(PROJECT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The fenced code blocks of `path`, with the not-run reason of the marker right before each, if any."""
    found: list[Snippet] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening or not opening["lang"]:
            index += 1
            continue
        previous = next((lines[i].strip() for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        marker = NOT_RUN.match(previous)
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        code = "\n".join(line.removeprefix(opening["indent"]) for line in lines[index + 1:end])
        found.append(Snippet(path, index + 1, opening["lang"], code, marker["reason"] if marker else None))
        index = end + 1
    return found


def shell_commands(code: str, console: bool = False) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment lines dropped; in a
    `console` block only the lines after a `$ ` prompt (the rest is output)."""
    commands, current = [], ""
    lines = code.splitlines()
    if console:
        lines = [line.removeprefix("$ ") for line in lines if line.startswith("$ ")]
    for line in lines:
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


# --- the generated references --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "render"), [("cli.md", render_cli), ("configuration.md", render_config)])
def test_generated_reference_is_current(name: str, render: Any) -> None:
    current = (DOCS / name).read_text() if (DOCS / name).is_file() else ""
    assert current == render(), f"docs/{name} is out of date: regenerate it with `{REGENERATE}`"


def test_references_cover_every_command_and_setting() -> None:
    import click

    from engine.cli.main import main
    from engine.config import Settings

    cli = (DOCS / "cli.md").read_text()

    def paths(command: click.Command, prefix: str) -> list[str]:
        subs = command.commands.items() if isinstance(command, click.Group) else []
        return [prefix, *(p for name, sub in subs for p in paths(sub, f"{prefix} {name}"))]

    for path in paths(main, "medallion"):
        assert f"## `{path}`" in cli
    rows = {match[0]: line for line in (DOCS / "configuration.md").read_text().splitlines()
            if line.startswith("| `") and (match := re.search(r"MEDALLION__\w+", line))}
    for section, field in Settings.model_fields.items():
        for key, item in field.annotation.model_fields.items():
            row = rows[f"MEDALLION__{section.upper()}__{key.upper()}"]
            assert ("**secret**" in row) == ("SecretStr" in str(item.annotation)), row


def test_snippet_parser_reads_markers_and_continuations(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not-run: needs a cluster -->\n```bash\nmedallion a \\\n  --b c  # note\n```\n"
                    "```python\nx = 1\n```\n")
    bash, python = snippets(page)
    assert (bash.lang, bash.not_run, bash.line) == ("bash", "needs a cluster", 4)
    assert shlex.split(shell_commands(bash.code)[0], comments=True) == ["medallion", "a", "--b", "c"]
    assert (python.lang, python.not_run, python.code) == ("python", None, "x = 1")
    assert shell_commands("$ medallion status\ntable  version\n$ medallion quality", console=True) == [
        "medallion status", "medallion quality"]


# --- every snippet -------------------------------------------------------------------------------------------


def _run_shell(snippet: Snippet) -> None:
    from engine.cli.main import main

    for command in shell_commands(snippet.code, console=snippet.lang == "console"):
        words = shlex.split(command, comments=True)
        assert words[0] == "medallion", (
            f"{snippet.where}: `{command}` is not a `medallion` command; make the block runnable or mark it "
            "`<!-- not-run: REASON -->`")
        result = CliRunner().invoke(main, words[1:], catch_exceptions=False)
        assert result.exit_code == 0, f"{snippet.where}: `{command}` exited {result.exit_code}:\n{result.output}"


def _check_yaml(snippet: Snippet) -> None:
    from engine.config import Settings

    data = yaml.safe_load(snippet.code)
    if isinstance(data, dict) and data and set(data) <= set(Settings.model_fields):
        Settings.model_validate(data)


@pytest.mark.parametrize("path", [p for p in FILES if snippets(p)], ids=lambda p: p.name)
def test_snippets_run(path: Path, retail_build: RetailBuild, tmp_path: Path,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = snippets(path)
    runnable = [b for b in blocks if b.not_run is None and (b.lang in SHELL | {"python"})]
    if runnable:
        shutil.copytree(retail_build.root, tmp_path / "lakehouse")
        (tmp_path / "features").symlink_to(PROJECT / "features", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for variable in ("MEDALLION__STORAGE__ROOT", "MEDALLION_CONFIG", "MEDALLION_FEATURE_REPO", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(variable, raising=False)
    namespace: dict[str, Any] = {"__name__": f"docs_{path.stem}"}
    try:
        for block in blocks:
            if block.not_run is not None:
                continue
            if block.lang == "python":
                exec(compile(block.code, block.where, "exec"), namespace)  # noqa: S102
            elif block.lang in SHELL:
                _run_shell(block)
            elif block.lang in ("yaml", "yml"):
                _check_yaml(block)
    finally:
        _forget_mlflow(monkeypatch)


def _forget_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training snippets point MLflow (its globals and, for subprocesses, `MLFLOW_TRACKING_URI` /
    `MLFLOW_REGISTRY_URI`) at this file's temporary root: forget it, so later tests start clean."""
    if "mlflow" not in sys.modules:
        return
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(variable, "")
        monkeypatch.delenv(variable)
