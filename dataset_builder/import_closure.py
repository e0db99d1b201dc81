"""Stage a Python file with its import closure: the project modules it needs, found from their ``import`` lines.

The Space (``app.py`` and the modules it imports, at their package paths: ``upload.space_bundle``) and the
``evaluate`` metric modules (a script and its metric code in one folder, imports made relative:
``trainer.evaluation.hub_metrics``) both ship project code without installing the project. It sits here, in the
package every other one imports, so that both ``upload`` and ``trainer`` may use it. See docs/space.md.
"""

import ast
import functools
import importlib.util
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


#: The project's top-level packages: what a closure follows and carries.
PROJECT_PACKAGES = ("dataset_builder", "trainer", "model_cards", "upload", "spaces_demo")


@dataclass
class Closure:
    """What a file imports within the project, directly or through another project module.

    Attributes:
        entry: The file the closure starts from.
        modules: Project module -> its source file, with the ``__init__.py`` of each package on the way (Python runs
            it before the module).
        imports: Importer (the entry's file name, or a module) -> ``(line, module)`` of each project module it
            imports itself (``from pkg import mod`` names ``pkg.mod``; ``pkg`` only for a name that is no module).
        top_level: Third-party top-level module -> the sites (``where:line``) that import it at module level.
        local: The same, for the imports inside a function.
    """

    entry: Path
    modules: dict[str, Path] = field(default_factory=dict)
    imports: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    top_level: dict[str, list[str]] = field(default_factory=dict)
    local: dict[str, list[str]] = field(default_factory=dict)

    def imported(self) -> list[str]:
        """The modules the entry imports, directly or through another, in order; the packages on the way left out."""
        found, todo = [], [self.entry.name]
        while todo:
            for _, module in self.imports.get(todo.pop(0), []):
                if module not in found:
                    found.append(module)
                    todo.append(module)
        return found


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_nodes(tree: ast.AST) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Each executed import statement (``if TYPE_CHECKING:`` skipped) and whether it runs inside a function."""

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, in_function
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from visit(child, nested)

    yield from visit(tree, False)


def _statements(tree: ast.AST, package: str | None) -> Iterator[tuple[int, list[str], list[str], bool]]:
    """``(line, modules, names, inside a function)`` of each executed import.

    ``modules`` are the modules the statement imports for sure; ``names`` the ``module.name`` of each ``from module
    import name``, which may be submodules. Relative imports are resolved against ``package``, or left out when it
    is ``None`` (a file outside the packages: they name its own folder's modules).
    """
    for node, in_function in _import_nodes(tree):
        if isinstance(node, ast.Import):
            yield node.lineno, [a.name for a in node.names], [], in_function
            continue
        module = node.module or ""
        if node.level:
            if package is None:
                continue
            parts = package.split(".")
            module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
        yield node.lineno, [module], [f"{module}.{a.name}" for a in node.names], in_function


def top_level_imports(source: str, where: str) -> set[str]:
    """The top-level names of the absolute imports a file outside the packages executes (``a.b`` -> ``a``)."""
    return {m.split(".")[0] for _, modules, _, _ in _statements(ast.parse(source, where), None) for m in modules}


@functools.cache
def _package_root(top: str) -> Path | None:
    spec = importlib.util.find_spec(top)  # imports nothing below the top package (its __init__ is light)
    return Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _project_file(name: str) -> Path | None:
    """The source file of project module ``name`` (a package's ``__init__.py``); None when ``name`` is no module.

    Found on disk from the top package's folder, without importing anything (``pkg.function`` is no module).
    """
    top, *rest = name.split(".")
    if top not in PROJECT_PACKAGES:
        return None
    root = _package_root(top)
    if root is None:
        return None
    path = root.joinpath(*rest)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if rest and path.with_suffix(".py").is_file() else None


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_closure(entry: Path | str) -> Closure:
    """Every project module ``entry`` imports, directly or through another, and the third-party names they import.

    Read from the ``import`` statements (nothing is imported), those inside functions included.

    Args:
        entry: A Python file (``app.py``, a metric module's script).

    Returns:
        The closure; ``modules`` holds each package's ``__init__`` too (Python runs it on the way to a module).
    """
    entry = Path(entry)
    closure = Closure(entry)
    todo = [(None, entry)]
    while todo:
        name, path = todo.pop()
        if name in closure.modules:
            continue
        if name is not None:
            closure.modules[name] = path
            parts = name.split(".")
            todo += [(p, _project_file(p)) for p in (".".join(parts[:i]) for i in range(1, len(parts)))]
        where = entry.name if name is None else name
        package = None if name is None else _package_of(name, path)
        sites = closure.imports.setdefault(where, [])
        for line, modules, names, in_function in _statements(ast.parse(path.read_text(), str(path)), package):
            for module in modules:
                top = module.split(".")[0]
                if top and top not in PROJECT_PACKAGES and top not in sys.stdlib_module_names:
                    (closure.local if in_function else closure.top_level).setdefault(top, []).append(f"{where}:{line}")
            submodules = [n for n in names if _project_file(n) is not None]
            # `from pkg import mod` needs pkg only on the way to mod; any other name is pkg's own
            targets = submodules + [m for m in modules if len(submodules) < len(names) or not names]
            for module in targets:
                if (file := _project_file(module)) is not None:
                    sites.append((line, module))
                    todo.append((module, file))
    return closure


def _flat_name(module: str) -> str:
    return module.rpartition(".")[2]


def _flat_source(text: str, where: str, carried: set[str]) -> str:
    """``text`` with its imports of ``carried`` modules made relative to one flat folder.

    Raises:
        ValueError: Naming the line of an import of a carried module that cannot be made relative.
    """
    lines = text.splitlines(keepends=True)
    for node, _ in _import_nodes(ast.parse(text, where)):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        submodules = [a.name for a in node.names if f"{node.module}.{a.name}" in carried]
        if submodules and len(submodules) == len(node.names):
            relative = "."  # from trainer.evaluation import metrics -> from . import metrics
        elif not submodules and node.module in carried:
            relative = f".{_flat_name(node.module)}"
        elif not submodules:
            continue
        else:
            raise ValueError(f"{where}:{node.lineno}: import the modules of {node.module} apart from its other names")
        line = lines[node.lineno - 1]
        head, tail = line[: node.col_offset], line[node.col_offset :]
        tail = re.sub(rf"^from\s+{re.escape(node.module)}(?=[\s\\])", f"from {relative}", tail)
        lines[node.lineno - 1] = head + tail
    text = "".join(lines)
    for line, modules, _, _ in _statements(ast.parse(text, where), None):
        if left := [m for m in modules if m in carried]:
            raise ValueError(f"{where}:{line}: the import of {left[0]} could not be made relative")
    return text


def stage_closure(closure: Closure, out: Path | str, *, flat: bool = False) -> list[Path]:
    """Write the project modules of ``closure`` into the folder ``out``.

    The package layout (the Space) copies every module of :attr:`Closure.modules` byte for byte to its package path
    (``trainer/models/loading.py``, each package's ``__init__.py``), beside the entry, which the caller copies with
    its own folder. The flat layout (an ``evaluate`` module) writes the entry and each module it imports
    (:meth:`Closure.imported`) as ``<last part of its name>.py`` into ``out`` itself, their imports of one another
    made relative (``from trainer.evaluation.metrics import x`` -> ``from .metrics import x``).

    Args:
        closure: What :func:`import_closure` found.
        out: The folder to write into (created).
        flat: Write the flat layout.

    Returns:
        The files written, relative to ``out``.

    Raises:
        ValueError: In the flat layout, for two modules of one file name, or an import of a carried module that
            cannot be made relative (``import trainer.evaluation.metrics``).
    """
    out = Path(out)
    if not flat:
        written = []
        for name, path in sorted(closure.modules.items()):
            rel = Path(*name.split("."))
            rel = rel / "__init__.py" if path.name == "__init__.py" else rel.with_suffix(".py")
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / rel)
            written.append(rel)
        return written
    carried = closure.imported()
    files, owners = {closure.entry.name: closure.entry}, {}
    for module in carried:
        name = f"{_flat_name(module)}.py"
        if name in files:
            raise ValueError(f"{module} and {owners.get(name, closure.entry.name)} would both be {name} in one folder")
        files[name], owners[name] = closure.modules[module], module
    sources = {name: _flat_source(path.read_text(), path.name, set(carried)) for name, path in files.items()}
    out.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        (out / name).write_text(source)
    return [Path(name) for name in sources]
