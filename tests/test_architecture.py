"""The import rules of docs/ARCHITECTURE.md, read from every import statement in the package
(module level and inside functions alike)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipseg"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module (and ``module.name``) an import statement in ``path`` names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _offenders(owner_prefix: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if module == owner_prefix or module.startswith(owner_prefix + ".")
        for name in names
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


def test_the_package_was_found():
    assert "pipseg.metrics" in MODULES and "pipseg.cli" in MODULES and len(MODULES) > 20


def test_no_library_module_imports_the_cli():
    offenders = sorted(
        f"{m} imports {n}" for m, names in MODULES.items() if not m.startswith("pipseg.cli")
        and m != "pipseg.__main__" for n in names if n == "pipseg.cli" or n.startswith("pipseg.cli.")
    )  # fmt: skip
    assert offenders == []


@pytest.mark.parametrize(
    ("owner", "forbidden"),
    [
        ("pipseg.data", ("pipseg.evaluate", "pipseg.inference", "pipseg.engine", "pipseg.crf.crf_folder",
                         "pipseg.predict", "pipseg.models")),
        ("pipseg.losses", ("pipseg.data", "pipseg.config")),
        ("pipseg.metrics", ("pipseg.models", "pipseg.engine", "pipseg.inference", "pipseg.losses")),
        ("pipseg.parallel", ("pipseg.data", "pipseg.models", "pipseg.engine", "torch")),
        ("pipseg.models", ("pipseg.engine", "pipseg.data", "pipseg.evaluate")),
    ],
)  # fmt: skip
def test_import_rules(owner, forbidden):
    assert any(m == owner or m.startswith(owner + ".") for m in MODULES), f"{owner} not found"
    assert _offenders(owner, forbidden) == []
