"""The layers point one way: the HTTP edge uses the domain, never the other way round.

Read from the source (every `import` of every module, relative ones resolved), so a new
import that points the wrong way fails here before it tangles the packages.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "chatsite"

# The HTTP edge: the endpoints and the table that maps domain errors to HTTP answers.
# Only the edge and the factory that wires it in (`chatsite`) may import it.
EDGE = ("chatsite.api", "chatsite.errors")
# Request bodies are read and described at the edge only.
HTTP_SCHEMA_LIBRARIES = ("marshmallow", "apispec")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, absolute (`from . import x` gives `package.x`)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


MODULES = {module_name(path): imported(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_modules_are_read():
    assert "chatsite.api.description" in MODULES["chatsite.api.openapi"]
    assert "chatsite.storage.tables.Chat" in MODULES["chatsite.storage.chats"]
    assert "chatsite.api.body" in MODULES["chatsite"]  # `from .api import body`


def test_only_the_edge_imports_the_edge():
    wrong = {
        module: sorted(name for name in names if within(name, EDGE))
        for module, names in MODULES.items()
        if not within(module, EDGE) and module != "chatsite"
    }
    assert {module: names for module, names in wrong.items() if names} == {}


def test_only_the_edge_knows_request_schemas():
    wrong = {
        module: sorted(name for name in names if within(name, HTTP_SCHEMA_LIBRARIES))
        for module, names in MODULES.items()
        if not within(module, EDGE)
    }
    assert {module: names for module, names in wrong.items() if names} == {}
