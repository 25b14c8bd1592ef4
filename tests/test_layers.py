"""The house's dependency rule, checked on the source: cli -> diffit (top level) -> {nn, diffusion, data} -> util.

``diffit.nn``, ``diffit.diffusion`` and ``diffit.data`` import no other part of diffit but ``diffit.util`` (nor
the CLI); ``diffit.util`` imports no other part of diffit; no module of the library imports the CLI. Imports
inside functions count too.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("nn", "diffusion", "data", "util")
BELOW = {"nn": ("util",), "diffusion": ("util",), "data": ("util",), "util": ()}  # what a layer may import


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` of every import in the module at ``path``, relative ones resolved to absolute names."""
    package = ".".join(path.relative_to(root).parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found.append((node.lineno, module))
    return found


def test_imports_are_found_everywhere_and_relative_ones_resolved(tmp_path: Path) -> None:
    module = tmp_path / "diffit" / "data" / "m.py"
    module.parent.mkdir(parents=True)
    module.write_text("import os\nfrom . import x\ndef f():\n    from ..train import step\n    import diffit_cli\n")
    expected = [(1, "os"), (2, "diffit.data"), (4, "diffit.train"), (5, "diffit_cli")]
    assert imported_modules(module, tmp_path) == expected


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_itself_and_what_lies_below(layer: str) -> None:
    allowed = [f"diffit.{name}." for name in (layer, *BELOW[layer])]
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "diffit" / layer).rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in ("diffit", "diffit_cli", "cli") and not f"{module}.".startswith(tuple(allowed))
    ]
    assert not wrong, "\n".join(wrong)


def test_the_library_never_imports_the_cli() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sorted((ROOT / "diffit").rglob("*.py"))
        for line, module in imported_modules(path)
        if module.split(".")[0] in ("diffit_cli", "cli")
    ]
    assert not wrong, "\n".join(wrong)


def test_every_package_is_installed() -> None:
    """A package missing from pyproject's list works in the editable install and is absent from the wheel."""
    line = re.search(r"^packages = (\[.*\])$", (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    listed = set(ast.literal_eval(line.group(1)))  # no tomllib on Python 3.10
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "diffit").rglob("__init__.py")}
    assert found - listed == set(), "not in [tool.setuptools] packages"
