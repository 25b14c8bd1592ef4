"""The documentation: the site builds strict (offline), every Python snippet of the README and the guides runs,
and every `diffit` command line of their shell blocks parses against the CLI as it is.

A snippet preceded by ``<!-- skip: reason -->`` (a GPU, the network, large data) is reported as skipped with
that reason. The other snippets of one page run in order in one namespace, like a notebook, in a temporary
working directory; so a page may build on its earlier snippets, and a renamed argument fails here.
"""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main

from diffit_cli.main import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"(?:<!--\s*skip:\s*(?P<skip>.*?)\s*-->\s*\n)?```python\n(?P<code>.*?)```", re.S)


def snippets(page: Path) -> list[tuple[int, str | None, str]]:
    """(line, skip reason or None, code) of every ```python block of ``page``."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start("code")), m["skip"], m["code"]) for m in _FENCE.finditer(text)]


def _cases() -> list:
    cases = []
    for page in PAGES:
        found = snippets(page)
        if any(skip is None for _, skip, _ in found):
            cases.append(pytest.param(page, None, id=f"{page.name}-run"))
        for line, skip, _ in found:
            if skip is not None:
                cases.append(pytest.param(page, skip, id=f"{page.name}:{line}-skipped"))
    return cases


@pytest.mark.parametrize(("page", "skip"), _cases())
def test_snippets_run(page: Path, skip: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if skip is not None:
        pytest.skip(skip)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for line, reason, code in snippets(page):
        if reason is None:
            exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)


def test_every_snippet_is_python_or_marked() -> None:
    """A skip marker states a reason, and no page hides a Python snippet under another fence name."""
    for page in PAGES:
        text = page.read_text()
        assert not re.search(r"<!--\s*skip:\s*-->", text), f"{page.name}: a skip marker without a reason"
        assert "```py\n" not in text, f"{page.name}: use ```python so the snippet runs in tests"


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    """`make docs`: no undocumented public name, no broken reference, offline."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    check = subprocess.run([sys.executable, "docs/check_docstrings.py"], cwd=ROOT, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "api" / "nn" / "index.html").is_file()


_SHELL = re.compile(r"```(?:bash|sh|console)\n(.*?)```", re.S)
# `diffit ...` (after env assignments or a path), or torchrun's `-m diffit_cli.main ...`
_COMMAND = re.compile(r"^(?:\w+=\S+\s+)*(?:\S*/)?diffit\s+(?P<a>.*)$|-m\s+diffit_cli\.main\s+(?P<b>.*)$")


def shell_commands() -> list:
    """``(page, line)`` of every diffit command in the shell blocks (continuations joined, comments dropped)."""
    found = []
    for page in PAGES:
        for block in _SHELL.findall(page.read_text()):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = line.split(" # ")[0].strip()
                if (m := _COMMAND.search(line)) and not line.startswith("#"):
                    words = [w for w in shlex.split(m["a"] or m["b"]) if w != "..."]  # "..." elides the rest
                    if "--help" not in words:
                        found.append(pytest.param(words, id=f"{page.name}: {line[:60]}"))
    return found


@pytest.mark.parametrize("words", shell_commands())
def test_documented_commands_parse(words: list[str]) -> None:
    """Each command's name, options and values as the CLI parses them (nothing runs): a renamed option, a
    removed command or a value of the wrong type in a guide fails here."""
    command = typer.main.get_command(app)
    ctx = command.make_context("diffit", list(words))
    while hasattr(command, "resolve_command"):  # a group: its sub-command parses the rest
        name, command, rest = command.resolve_command(ctx, [*getattr(ctx, "_protected_args", []), *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    assert not ctx.args, f"arguments the command does not take: {ctx.args}"


def test_the_guides_document_commands() -> None:
    assert len(shell_commands()) >= 20  # the extraction above finds the guides' commands
