"""Flatten modules of a package into one self-contained module, from their source (what `score_diffusers.export`
ships so that stock Diffusers can run this package's pipelines without it).

The modules `roots` import from the package are followed, at module level and inside functions, and laid out one after
another, each after those it imports at module level. Each module-level binding keeps its meaning in the one
namespace of the result:

- `from .x import a` is cut, and the importer's references to `a` read x's binding (`from .x import a as b` likewise:
  the references to `b` are renamed); inside a function, the cut import becomes `pass`, or `b = <x's a>` where the
  name differs;
- `from .. import sampling` (a module used as a namespace) becomes a `types.SimpleNamespace` of that module's public
  names, built after its section;
- a module-level name that two modules bind with different meanings, or that shadows a builtin, keeps its name in the
  first module that binds it (a builtin keeps its own) and is renamed `name__<module path>` elsewhere, every reference
  that resolves to that module-level binding included (Python's scoping rules: parameters, locals, `global`,
  comprehensions and class bodies are told apart); imports from outside the package stay as they are.

What cannot be flattened faithfully raises a `FlattenError` naming the module and line: a star import, an import of
the package's top level or from outside the package's folder, a module-level import cycle, two modules binding one
name by different imports from outside the package, a namespace attribute the namespace lacks, a `global` statement or
`__all__` change it cannot follow, or a line of the result that reads as a relative import to Diffusers.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Diffusers' own patterns for the relative imports it copies (`dynamic_modules_utils.get_relative_imports`): no line of
# the result may match them.
RELATIVE_IMPORT_LINE = re.compile(r"^\s*(?:import\s+\.(\S+)\s*$|from\s+\.(\S+)\s+import)", re.MULTILINE)
_HEADER = "from __future__ import annotations\n\nimport types"
_HEADER_IMPORTS = {"types": "import types"}
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)

# A binding's meaning: ("def", module, name), ("abs", import statement), ("ns", module), or ("ref", module, name)
# before it is resolved to one of the others.
Meaning = tuple[str, ...]


class FlattenError(ValueError):
    """The modules cannot be flattened faithfully."""


@dataclass
class _Import:
    """A `from <package module> import ...` statement of a module."""

    node: ast.ImportFrom
    target: str
    lazy: bool
    # bound name -> ("ref", target, name) or ("ns", submodule)
    names: dict[str, Meaning]


@dataclass
class _Module:
    name: str
    path: Path
    is_package: bool
    lines: list[str]
    tree: ast.Module
    imports: list[_Import] = field(default_factory=list)
    # Module-level bindings: name -> meaning (unresolved for relative imports).
    bindings: dict[str, Meaning] = field(default_factory=dict)
    top_level_deps: set[str] = field(default_factory=set)
    lazy_deps: set[str] = field(default_factory=set)
    public: list[str] | None = None
    # Lines to cut: (first, last) of `__future__` imports and `__all__`.
    cut_lines: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True)
class Flattened:
    """The flattened `source` and the package modules in it, in order."""

    source: str
    modules: tuple[str, ...]


# ---- scopes ----------------------------------------------------------------------------------------------------------


def _bound_in_scope(scope: ast.AST) -> tuple[set[str], set[str]]:
    """(names bound in this function, lambda, class or comprehension scope itself, names it declares `global`)."""
    bound: set[str] = set()
    declared: set[str] = set()
    if isinstance(scope, _FUNCTIONS):
        arguments = scope.args
        bound |= {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                  arguments.vararg, arguments.kwarg) if a is not None}
        pending = list(scope.body) if isinstance(scope.body, list) else [scope.body]
    elif isinstance(scope, ast.ClassDef):
        pending = list(scope.body)
    else:
        pending = [generator.target for generator in scope.generators]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            bound.add(node.id)
        elif isinstance(node, ast.Global):
            declared.update(node.names)
        elif isinstance(node, ast.Nonlocal):
            bound.update(node.names)  # bound in an enclosing function, never the module's
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            bound.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            bound.add(node.rest)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
            pending.extend(_outer_parts(node))
            continue
        if isinstance(node, (ast.Lambda, *_COMPREHENSIONS)):
            pending.extend(_outer_parts(node))
            continue
        pending.extend(ast.iter_child_nodes(node))
    return bound - declared, declared


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of a scope-making node that run in the enclosing scope."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        arguments = node.args
        parts = [*arguments.defaults, *(d for d in arguments.kw_defaults if d is not None)]
        if not isinstance(node, ast.Lambda):
            parts += node.decorator_list
            parts += [a.annotation for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                                             arguments.vararg, arguments.kwarg) if a is not None and a.annotation]
            parts += [node.returns] if node.returns else []
        return parts
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
    return [node.generators[0].iter]


def _inner_parts(node: ast.AST) -> list[ast.AST]:
    """The parts of a scope-making node that run in its own scope."""
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return list(node.body)
    parts: list[ast.AST] = []
    for index, generator in enumerate(node.generators):
        parts += [generator.target, *generator.ifs] + ([generator.iter] if index else [])
    if isinstance(node, ast.DictComp):
        return parts + [node.key, node.value]
    return parts + [node.elt]


def _module_references(tree: ast.Module, names: set[str]) -> list[ast.AST]:
    """The nodes among `names` that refer to the module-level binding: `Name` nodes, and the module-level
    `def` / `class` statements defining one. A `global` declaration of one of `names` is refused (it is not renamed)."""
    found: list[ast.AST] = []
    # Each scope: (is a class body, names bound in it, names declared global in it).
    Scope = tuple[bool, set[str], set[str]]

    def is_module_level(name: str, chain: Sequence[Scope]) -> bool:
        for depth, (is_class, bound, declared) in enumerate(reversed(chain)):
            if is_class and depth > 0:
                continue  # code inside a class body's functions does not see the class's names
            if name in declared:
                return True
            if name in bound:
                return False
        return True

    def visit(node: ast.AST, chain: tuple[Scope, ...]) -> None:
        if isinstance(node, ast.Name):
            if node.id in names and is_module_level(node.id, chain):
                found.append(node)
            return
        if isinstance(node, ast.Global) and names.intersection(node.names):
            raise FlattenError(f"line {node.lineno}: `global {', '.join(node.names)}` of a name the bundle renames.")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, *_COMPREHENSIONS)):
            if not chain and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) \
                    and node.name in names:
                found.append(node)
            for part in _outer_parts(node):
                visit(part, chain)
            bound, declared = _bound_in_scope(node)
            inner = (*chain, (isinstance(node, ast.ClassDef), bound, declared))
            for part in _inner_parts(node):
                visit(part, inner)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, chain)

    visit(tree, ())
    return found


# ---- reading the modules ---------------------------------------------------------------------------------------------


class _Package:
    """Where the package's modules live, and how their imports resolve."""

    def __init__(self, name: str, folder: Path, left_out: Mapping[str, Mapping[str, str]]):
        self.name, self.folder, self.left_out = name, folder, left_out

    def owns(self, module: str) -> bool:
        return module == self.name or module.startswith(self.name + ".")

    def file(self, module: str) -> tuple[Path, bool] | None:
        """(file, is_package) of a module of the package, or None."""
        if not self.owns(module):
            return None
        base = self.folder.joinpath(*module.split(".")[1:])
        if (base / "__init__.py").is_file():
            return base / "__init__.py", True
        if module != self.name and base.with_suffix(".py").is_file():
            return base.with_suffix(".py"), False
        return None

    def target(self, module: _Module, node: ast.ImportFrom) -> str | None:
        """The package module an import reads from, or None for an import from outside the package."""
        if node.level == 0:
            return node.module if node.module and self.owns(node.module) else None
        package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
        if node.level - 1 >= len(package):
            raise FlattenError(f"{module.name}:{node.lineno}: `from {'.' * node.level}{node.module or ''} import` "
                               "leaves the package.")
        base = package[: len(package) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))


def _module_level_statements(body: Sequence[ast.stmt]) -> Iterable[ast.stmt]:
    """The statements that run at import: the module's body and the blocks of its `if` / `try` / `with` / loops."""
    for node in body:
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for name in ("body", "orelse", "finalbody"):
            yield from _module_level_statements(getattr(node, name, []))
        for handler in getattr(node, "handlers", []):
            yield from _module_level_statements(handler.body)


def _bound_names(node: ast.stmt) -> list[str]:
    """Names a module-level statement binds (imports apart)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [node.target]
    elif isinstance(node, (ast.With, ast.AsyncWith)):
        targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
    elif isinstance(node, ast.Try):
        return [handler.name for handler in node.handlers if handler.name]
    else:
        return []
    return [sub.id for target in targets for sub in ast.walk(target) if isinstance(sub, ast.Name)]


def _literal_names(node: ast.expr) -> list[str] | None:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return list(value) if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else None


def _read_module(package: _Package, name: str) -> _Module:
    located = package.file(name)
    if located is None:
        raise FlattenError(f"{name} is not a module of {package.name} (looked in {package.folder}).")
    path, is_package = located
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    module = _Module(name, path, is_package, source.splitlines(), tree)
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}

    def in_function(node: ast.AST) -> bool:
        while node in parents:
            node = parents[node]
            if isinstance(node, _FUNCTIONS):
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(package.owns(alias.name) for alias in node.names):
            raise FlattenError(f"{name}:{node.lineno}: `import {package.name}...`; import with `from` instead.")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.module == "__future__":
            if node not in tree.body:
                raise FlattenError(f"{name}:{node.lineno}: `from __future__` below the module level.")
            unsupported = {alias.name for alias in node.names} - {"annotations"}
            if unsupported:
                raise FlattenError(f"{name}:{node.lineno}: `from __future__ import {', '.join(sorted(unsupported))}`.")
            module.cut_lines.append((node.lineno, node.end_lineno or node.lineno))
            continue
        target = package.target(module, node)
        if target is None:
            continue
        lazy = in_function(node)
        if target in package.left_out:
            missing = [alias.name for alias in node.names if alias.name not in package.left_out[target]]
            if missing or not lazy:
                raise FlattenError(f"{name}:{node.lineno}: imports {', '.join(missing) or 'from'} {target}, which is "
                                   "left out of the bundle.")
            module.imports.append(_Import(node, target, lazy, {}))
            continue
        imported: dict[str, Meaning] = {}
        for alias in node.names:
            if alias.name == "*":
                raise FlattenError(f"{name}:{node.lineno}: star import from {target}.")
            submodule = f"{target}.{alias.name}"
            if package.file(submodule) is not None:
                imported[alias.asname or alias.name] = ("ns", submodule)
                (module.lazy_deps if lazy else module.top_level_deps).add(submodule)
            elif target == package.name:
                raise FlattenError(f"{name}:{node.lineno}: imports {alias.name} from the package's top level; import "
                                   "it from the module that defines it.")
            elif package.file(target) is None:
                raise FlattenError(f"{name}:{node.lineno}: {target} is not a module of {package.name}.")
            else:
                imported[alias.asname or alias.name] = ("ref", target, alias.name)
                (module.lazy_deps if lazy else module.top_level_deps).add(target)
        module.imports.append(_Import(node, target, lazy, imported))
        if not lazy:
            module.bindings.update(imported)

    for node in _module_level_statements(tree.body):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if node not in tree.body:
                raise FlattenError(f"{name}:{node.lineno}: `__all__` assigned below the module level.")
            module.public = _literal_names(node.value)
            module.cut_lines.append((node.lineno, node.end_lineno or node.lineno))
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node.target, "id", None) == "__all__":
            raise FlattenError(f"{name}:{node.lineno}: `__all__` changed after its assignment.")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                statement = f"import {alias.name} as {alias.asname}" if alias.asname else f"import {bound}"
                module.bindings[bound] = ("abs", statement)
        elif isinstance(node, ast.ImportFrom):
            if node.module != "__future__" and package.target(module, node) is None:
                for alias in node.names:
                    module.bindings[alias.asname or alias.name] = ("abs", f"from {node.module} import {alias.name}")
        else:
            for bound in _bound_names(node):
                if module.bindings.get(bound, ("def",))[0] != "def":
                    raise FlattenError(f"{name}:{node.lineno}: `{bound}` is both imported and assigned at module "
                                       "level.")
                module.bindings[bound] = ("def", name, bound)
    for node in ast.walk(tree):
        imported_here = [n for n in getattr(node, "names", []) if module.bindings.get(n, ("def",))[0] in ("ref", "ns")]
        if isinstance(node, ast.Global) and imported_here:
            raise FlattenError(f"{name}:{node.lineno}: `global {', '.join(imported_here)}` rebinds a name imported "
                               "from the package, which the bundle shares with the module it comes from.")
    return module


# ---- flattening ------------------------------------------------------------------------------------------------------


def _closure(package: _Package, roots: Sequence[str]) -> dict[str, _Module]:
    modules: dict[str, _Module] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name not in modules:
            modules[name] = module = _read_module(package, name)
            pending.extend(sorted(module.top_level_deps | module.lazy_deps))
    return modules


def _module_order(roots: Sequence[str], modules: Mapping[str, _Module]) -> list[str]:
    """Each module after those it imports at module level (depth first, in a fixed order)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise FlattenError(f"import cycle at module level: {' -> '.join((*chain[chain.index(name):], name))}.")
        state[name] = "active"
        for dep in sorted(modules[name].top_level_deps):
            visit(dep, (*chain, name))
        state[name] = "done"
        order.append(name)

    for name in [*roots, *sorted(modules)]:
        visit(name, ())
    return order


def _resolve(modules: Mapping[str, _Module], meaning: Meaning, seen: tuple = ()) -> Meaning:
    """A ("ref", module, name) followed to the binding it reads."""
    if meaning[0] != "ref":
        return meaning
    _, module, name = meaning
    binding = modules[module].bindings.get(name)
    if binding is None or meaning in seen:
        raise FlattenError(f"{module} has no module-level `{name}` to import.")
    return _resolve(modules, binding, (*seen, meaning))


def _natural_name(meaning: Meaning, bound: str) -> str:
    return meaning[2] if meaning[0] == "def" else bound if meaning[0] == "abs" else meaning[1].rpartition(".")[2]


def _bundle_names(order: Sequence[str], modules: Mapping[str, _Module]) -> dict[Meaning, str]:
    """Each meaning's name in the bundle: its own name where it is the first meaning of that name (imports from
    outside the package and builtins come first), `name__<module path>` elsewhere."""
    rank = {name: index for index, name in enumerate(order)}
    by_name: dict[str, list[Meaning]] = {}
    for name in order:
        module = modules[name]
        lazy = [item for imp in module.imports if imp.lazy for item in imp.names.items()]
        for bound, meaning in [*module.bindings.items(), *lazy]:
            meaning = _resolve(modules, meaning)
            natural = _natural_name(meaning, bound)
            if meaning not in by_name.setdefault(natural, []):
                by_name[natural].append(meaning)
    names: dict[Meaning, str] = {}
    taken = set(by_name) | set(_HEADER_IMPORTS)
    for natural, meanings in by_name.items():
        absolute = [m for m in meanings if m[0] == "abs"]
        if natural in _HEADER_IMPORTS:
            absolute = [*absolute, ("abs", _HEADER_IMPORTS[natural])]
        if len(set(absolute)) > 1:
            imports = ", ".join(sorted({meaning[1] for meaning in absolute}))
            raise FlattenError(f"`{natural}` is bound by different imports: {imports}.")
        first = absolute[0] if absolute else None
        if first is None and not hasattr(builtins, natural):
            first = min(meanings, key=lambda m: (rank[m[1]], m))
        for meaning in meanings:
            if meaning == first:
                names[meaning] = natural
                continue
            mangled = f"{natural}__{meaning[1].partition('.')[2].replace('.', '_') or meaning[1]}"
            if mangled in taken:
                raise FlattenError(f"`{natural}` of {meaning[1]} cannot be renamed: `{mangled}` is taken.")
            taken.add(mangled)
            names[meaning] = mangled
    return names


def _public_names(module: _Module) -> list[str]:
    """What `module.attribute` can read: its `__all__`, else its public module-level names (imports from outside the
    package apart)."""
    if module.public is not None:
        return module.public
    return sorted(n for n, meaning in module.bindings.items() if meaning[0] != "abs" and not n.startswith("_"))


def _check_namespace_attributes(modules: Mapping[str, _Module]) -> None:
    """Every `namespace.attribute` a module reads exists in the namespace the bundle builds."""
    for module in modules.values():
        namespaces = {bound: meaning[1] for imp in module.imports for bound, meaning in imp.names.items()
                      if meaning[0] == "ns"}
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in namespaces:
                names = _public_names(modules[namespaces[node.value.id]])
                if node.attr not in names:
                    raise FlattenError(f"{module.name}:{node.lineno} reads `{node.value.id}.{node.attr}`, which "
                                       f"{namespaces[node.value.id]} does not offer ({', '.join(names)}).")


def _byte_slice(line: str, start: int, end: int) -> tuple[str, str, str]:
    """`line` split at the UTF-8 byte offsets `ast` gives."""
    data = line.encode()
    return data[:start].decode(), data[start:end].decode(), data[end:].decode()


def _module_text(module: _Module, modules: Mapping[str, _Module], names: Mapping[Meaning, str],
                 left_out: Mapping[str, Mapping[str, str]]) -> str:
    lines = list(module.lines)
    renames = {bound: names[_resolve(modules, meaning)] for bound, meaning in module.bindings.items()}
    renames = {bound: new for bound, new in renames.items() if new != bound}
    # Renames, on the original lines (right to left within a line, so offsets stay valid).
    edits: dict[int, list[tuple[int, int, str, str]]] = {}
    for node in _module_references(module.tree, set(renames)):
        if isinstance(node, ast.Name):
            old, line, start, end = node.id, node.lineno, node.col_offset, node.end_col_offset
        else:
            old, line = node.name, node.lineno
            head = lines[line - 1].encode()
            match = re.compile(rf"\b(?:async\s+def|def|class)\s+({re.escape(old)})\b".encode()).search(
                head, node.col_offset)
            if match is None:
                raise FlattenError(f"{module.name}:{line}: cannot find the name of `{old}`'s definition.")
            start, end = match.span(1)
        edits.setdefault(line, []).append((start, end, old, renames[old]))
    for line, spans in edits.items():
        text = lines[line - 1]
        for start, end, old, new in sorted(spans, reverse=True):
            before, found, after = _byte_slice(text, start, end)
            if found != old:
                raise FlattenError(f"{module.name}:{line}: `{old}` is not where the syntax tree puts it.")
            text = before + new + after
        lines[line - 1] = text
    # Cuts: (first, last, replacement), whole lines.
    cuts = [(first, last, []) for first, last in module.cut_lines]
    for imp in module.imports:
        node = imp.node
        indent = " " * node.col_offset
        first, last = module.lines[node.lineno - 1], module.lines[(node.end_lineno or node.lineno) - 1]
        before, _, _ = _byte_slice(first, node.col_offset, node.col_offset)
        _, _, after = _byte_slice(last, node.end_col_offset or 0, node.end_col_offset or 0)
        if before.strip() or (after.strip() and not after.strip().startswith("#")):
            raise FlattenError(f"{module.name}:{node.lineno}: an import sharing its line with another statement.")
        replacement = []
        if imp.target in left_out:
            replacement = [f"{indent}{a.asname or a.name} = {left_out[imp.target][a.name]}" for a in node.names]
        elif imp.lazy:
            for bound, meaning in imp.names.items():
                new = names[_resolve(modules, meaning)]
                if new != bound:
                    replacement.append(f"{indent}{bound} = {new}")
        if not replacement and node not in module.tree.body:
            replacement = [f"{indent}pass"]  # keeps the block it stood in a block
        cuts.append((node.lineno, node.end_lineno or node.lineno, replacement))
    for first, last, replacement in sorted(cuts, reverse=True):
        lines[first - 1 : last] = replacement
    return "\n".join(lines).strip("\n")


def flatten_modules(
    roots: Iterable[str],
    *,
    package: str,
    package_dir: str | Path,
    left_out: Mapping[str, Mapping[str, str]] | None = None,
    docstring: str = "",
) -> Flattened:
    """Flatten the modules `roots` of `package` (dotted names; the package's source lies in `package_dir`) and every
    package module they import into one module's source; see the module docstring for the rules.

    Args:
        roots (`Iterable[str]`): the modules whose names the result must offer, e.g. a pipeline's module.
        package (`str`), package_dir (`str` or `Path`): the package's name and its folder.
        left_out (`Mapping[str, Mapping[str, str]]`, *optional*): modules not to include, each with the expression
            that stands for each name a function imports from it.
        docstring (`str`): the result's module docstring.

    Returns:
        `Flattened` with `source` and `modules`, the package modules in it in order.
    """
    packaged = _Package(package, Path(package_dir), left_out or {})
    roots = list(dict.fromkeys(roots))
    modules = _closure(packaged, roots)
    order = _module_order(roots, modules)
    _check_namespace_attributes(modules)
    names = _bundle_names(order, modules)
    namespaces = sorted({_resolve(modules, meaning) for module in modules.values() for imp in module.imports
                         for meaning in imp.names.values() if _resolve(modules, meaning)[0] == "ns"})
    sections = []
    for name in order:
        module = modules[name]
        rule = "# " + "-" * 116
        section = [rule, f"# {module.path.relative_to(packaged.folder.parent).as_posix()}", rule]
        body = _module_text(module, modules, names, packaged.left_out)
        section += ["", body] if body else []
        for meaning in namespaces:
            if meaning[1] == name:
                attributes = [(attribute, names[_resolve(modules, ("ref", name, attribute))])
                              for attribute in _public_names(module)]
                section += ["", f"{names[meaning]} = types.SimpleNamespace(",
                            *(f"    {attribute}={value}," for attribute, value in attributes), ")"]
        sections.append("\n".join(section))
    head = f'"""{docstring}"""\n\n{_HEADER}' if docstring else _HEADER
    source = "\n\n\n".join([head, *sections]) + "\n"
    for match in RELATIVE_IMPORT_LINE.finditer(source):
        line = source[: match.start()].count("\n") + 1
        raise FlattenError(f"line {line} of the result reads as a relative import to Diffusers: {match.group(0)!r}.")
    compile(source, "<flattened>", "exec")
    return Flattened(source=source, modules=tuple(order))
