"""Fail when a public name of the documented modules has no docstring (`make docs` and tests/test_docs.py).

mkdocs' strict mode catches broken references; this catches the other half of "the reference cannot drift":
every public class, function, method and property the API pages render must say what it is. Public means
what the pages show: a module's `__all__` when it has one, else every name not starting with `_` that the
module defines itself (imports are not its API).

Run: python docs/check_docstrings.py
"""

import sys
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parent.parent
# The modules the API reference renders (docs/api/*.md).
DOCUMENTED = [
    "diffit.nn",
    "diffit.diffusion",
    "diffit.data",
    "diffit.evaluation",
    "diffit.objectives",
    "diffit.train",
    "diffit.generate",
    "diffit.checkpoint",
    "diffit.runs",
    "diffit.util",
]


def _public_members(obj: griffe.Object) -> list[griffe.Object]:
    """The members of a module or class that the reference renders."""
    out = []
    exported = getattr(obj, "exports", None) if obj.is_module else None
    for name, member in obj.members.items():
        if name.startswith("_"):
            continue
        if obj.is_module:
            if exported is not None:
                if name not in exported:
                    continue
            elif member.is_alias:
                continue  # imported from elsewhere: documented where it is defined
        try:
            target = member.final_target if member.is_alias else member
        except griffe.AliasResolutionError:
            continue  # an import from outside the package
        if target.is_attribute and not obj.is_module:
            continue  # dataclass fields and instance attributes: described by their class
        out.append(target)
    return out


def missing_docstrings(modules: list[str] = DOCUMENTED) -> list[str]:
    """Paths of the public objects (and public methods of public classes) that have no docstring."""
    loader = griffe.GriffeLoader(search_paths=[str(ROOT)])
    missing: list[str] = []
    for name in modules:
        module = loader.load(name)
        loader.resolve_aliases(implicit=False, external=False)
        if not module.docstring:
            missing.append(module.path)
        for obj in _public_members(module):
            if obj.is_attribute:
                continue  # module constants are documented by a comment or the module docstring
            if not obj.docstring:
                missing.append(obj.path)
            if obj.is_class:
                for member in _public_members(obj):
                    if member.is_function and not member.docstring and not member.name.startswith("__"):
                        missing.append(member.path)
    return sorted(set(missing))


def main() -> int:
    missing = missing_docstrings()
    for path in missing:
        print(f"undocumented public name: {path}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
