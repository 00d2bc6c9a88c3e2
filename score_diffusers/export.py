"""Hub repositories that load in stock Diffusers: this package's pipeline and scheduler code written into a saved
pipeline folder, in the layout Diffusers' `custom_pipeline=` / `trust_remote_code=True` loading reads, so that

    DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline_score_guided", trust_remote_code=True)

samples it where `score_diffusers` is not installed. Opt-in: `export_code(folder)` (or `save_pretrained_with_code`);
a plain `save_pretrained` writes no code, and nothing here runs code found in a folder.

The layout, beside an unchanged `model_index.json` (which names each component by the full module path of its class,
e.g. `["score_diffusers.schedulers.scheduling_predictor_corrector", "PredictorCorrectorScheduler"]`):

    pipeline_score_guided.py          the custom pipeline: imports the pipeline class from the bundle
    score_diffusers_bundle_<hash>.py  the package modules the pipeline and components need, flattened into one file
    scheduler/<library>.py            one per component of this package, named as model_index.json names its library:
                                      Diffusers runs `<component>/<library>.py` and takes the class from it

How Diffusers 0.42 reads it (`diffusers.utils.dynamic_modules_utils`, `pipeline_loading_utils`): a `custom_pipeline`
naming a file of the folder is copied into the dynamic-module cache (`HF_MODULES_CACHE/diffusers_modules/local/`)
together with the files it imports relatively (`from .x import ...`, one level deep, for a local folder), then
executed; the one `DiffusionPipeline` subclass in it is the pipeline. A component whose folder holds
`<library>.py` is loaded from that file the same way, as module `diffusers_modules.local.<library>`. Both entry files
are re-executed on every load; the bundle is imported by them and so runs once per process, which keeps one class per
name: the scheduler the pipeline receives is an instance of the bundle's own scheduler class. Hence the entry files
are stubs, and the bundle's name carries a hash of its text, so folders exported by different versions of this package
never share a module in that cache. The files must not import `score_diffusers`; the bundle holds no relative import
(Diffusers would look for each as a file of the folder).

Diffusers takes `<component>/<library>.py` for any loader once it exists, also `ScoreGuidedPipeline.from_pretrained`,
which would then refuse the folder without `trust_remote_code`. So `ScoreGuidedPipeline.from_pretrained` builds those
components from this package's own classes first (`package_components`) and passes them in: no file of the folder is
executed. Hub repositories without these files do not load through `from_pretrained` from the Hub at all in Diffusers
0.42 (its download step requires `<component>/<library>.py` for a component library outside Diffusers).

The bundle is made from this package's source at export time (one source of truth): the modules the pipeline and
component classes import, followed transitively, ordered so that each comes after those it imports at module level;
`from .x import a` lines are dropped (the names are module-level names of the one file), `from .x import a as b`
becomes `b = a`, `from .. import sampling` becomes a `types.SimpleNamespace` of that package's names. Anything this
cannot flatten faithfully (two modules defining one name, a builtin shadowed, a star import, an attribute of a
namespace that it lacks) raises an `ExportError` naming it, so the package's own test suite catches a change that
would break the export.
"""

from __future__ import annotations

import ast
import builtins
import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE = __name__.rpartition(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLE_PREFIX = f"{PACKAGE}_bundle_"
_HASH_LENGTH = 12
_MODEL_INDEX = "model_index.json"
# Diffusers' own patterns for the relative imports it copies (`dynamic_modules_utils.get_relative_imports`): no line of
# the bundle may match them.
_RELATIVE_IMPORT_LINE = re.compile(r"^\s*(?:import\s+\.(\S+)\s*$|from\s+\.(\S+)\s+import)", re.MULTILINE)
# Package modules the bundle leaves out, with what their names become in it. This module itself: in the bundle,
# `from_pretrained` finds no component to build from the package, and Diffusers' own loading applies.
_LEFT_OUT: dict[str, dict[str, str]] = {__name__: {"package_components": "lambda pipeline_class, source, kwargs: {}"}}
# Names the bundle's header binds.
_HEADER = "from __future__ import annotations\n\nimport types\n"
_HEADER_IMPORTS = {"types": "import types"}


class ExportError(ValueError):
    """The folder or the package's source cannot be exported as self-contained code."""


# ---- reading the package's modules -----------------------------------------------------------------------------------


@dataclass
class _ModuleInfo:
    """One module of the package as the bundle needs it: its text with the intra-package imports cut out, what it
    imports from the package (at module level, which orders the bundle, or inside functions), what it binds."""

    name: str
    path: Path
    is_package: bool
    lines: list[str]
    top_level_deps: set[str] = field(default_factory=set)
    lazy_deps: set[str] = field(default_factory=set)
    # Namespace imports (`from .. import sampling`): bound name -> module name.
    namespaces: dict[str, str] = field(default_factory=dict)
    # Names the module defines or re-binds at module level (defs, classes, assignments, aliases) -> the statement
    # (its syntax tree, dumped): two modules may bind one name by the same statement, e.g. `logger = ...(__name__)`.
    defined: dict[str, str] = field(default_factory=dict)
    # Names it imports unchanged from other modules of the package (what a package's `__init__` re-exports).
    reexported: set[str] = field(default_factory=set)
    # Names bound at module level by absolute imports -> the import, to catch two modules binding one name differently.
    imported: dict[str, str] = field(default_factory=dict)
    # `__all__` if the module lists one, else None.
    public: list[str] | None = None
    future: set[str] = field(default_factory=set)


def _relative_path(module: str) -> Path:
    return Path(*module.split(".")[1:])


def _module_file(module: str) -> tuple[Path, bool] | None:
    """(file, is_package) of a module of the package, or None when `module` is not one."""
    if not _is_package_name(module):
        return None
    base = PACKAGE_DIR / _relative_path(module)
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if module != PACKAGE and base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    return None


def _target_module(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    """The package module an import refers to, or None for an import from outside the package."""
    if node.level == 0:
        return node.module if node.module and _is_package_name(node.module) else None
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise ExportError(f"{module}: `from {'.' * node.level}{node.module or ''} import` leaves the package.")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _check_not_top_level(module: str, node: ast.ImportFrom, target: str, name: str) -> None:
    """The package's own `__init__` imports its modules lazily by name; the bundle takes names from those modules."""
    if target == PACKAGE:
        raise ExportError(f"{module}:{node.lineno}: imports {name} from the package's top level; import it from "
                          f"the module that defines it.")


def _is_package_name(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


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
    else:
        return []
    return [sub.id for target in targets for sub in ast.walk(target) if isinstance(sub, ast.Name)]


def _in_function(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return True
    return False


def _literal_names(node: ast.expr) -> list[str] | None:
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return list(value) if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else None


def _read_module(module: str) -> _ModuleInfo:
    located = _module_file(module)
    if located is None:
        raise ExportError(f"{module} is not a module of {PACKAGE} (looked in {PACKAGE_DIR}).")
    path, is_package = located
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(path))
    info = _ModuleInfo(module, path, is_package, source.splitlines())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    module_level = list(_module_level_statements(tree.body))
    # (first line, last line, replacement lines), 1-based and inclusive.
    cuts: list[tuple[int, int, list[str]]] = []

    def cut(node: ast.stmt, replacement: list[str]) -> None:
        first, last = info.lines[node.lineno - 1], info.lines[(node.end_lineno or node.lineno) - 1]
        after = last[node.end_col_offset:].strip()
        if first[: node.col_offset].strip() or (after and not after.startswith("#")):
            raise ExportError(f"{module}:{node.lineno}: a statement sharing its line with another cannot be cut.")
        cuts.append((node.lineno, node.end_lineno or node.lineno, replacement))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(_is_package_name(alias.name) for alias in node.names):
            raise ExportError(f"{module}:{node.lineno}: `import {PACKAGE}...`; import from the package with `from`.")
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.module == "__future__":
            if node not in tree.body:
                raise ExportError(f"{module}:{node.lineno}: `from __future__` below the module level.")
            info.future.update(alias.name for alias in node.names)
            cut(node, [])
            continue
        target = _target_module(module, is_package, node)
        if target is None:
            continue
        lazy = _in_function(node, parents)
        indent = " " * node.col_offset
        replacement = []
        if target in _LEFT_OUT:
            for alias in node.names:
                if not lazy or alias.name not in _LEFT_OUT[target]:
                    raise ExportError(f"{module}:{node.lineno}: imports {alias.name} of {target}, which is not bundled.")
                replacement.append(f"{indent}{alias.asname or alias.name} = {_LEFT_OUT[target][alias.name]}")
            cut(node, replacement)
            continue
        for alias in node.names:
            if alias.name == "*":
                raise ExportError(f"{module}:{node.lineno}: star import from {target}.")
            bound = alias.asname or alias.name
            if _module_file(f"{target}.{alias.name}") is not None:
                # A module used as a namespace: bound at the bundle's module level after that module's section.
                (info.lazy_deps if lazy else info.top_level_deps).add(f"{target}.{alias.name}")
                info.namespaces[bound] = f"{target}.{alias.name}"
                continue
            _check_not_top_level(module, node, target, alias.name)
            if _module_file(target) is None:
                raise ExportError(f"{module}:{node.lineno}: {target} is not a module of {PACKAGE}.")
            (info.lazy_deps if lazy else info.top_level_deps).add(target)
            if bound != alias.name:
                replacement.append(f"{indent}{bound} = {alias.name}")
            if not lazy and bound != alias.name:
                info.defined[bound] = f"{bound} = {target}.{alias.name}"
            elif not lazy:
                info.reexported.add(bound)
        if node not in tree.body and not replacement:
            # Keep the block it stood in a valid block.
            replacement = [f"{indent}pass"]
        cut(node, replacement)

    for node in module_level:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            if node not in tree.body:
                raise ExportError(f"{module}:{node.lineno}: `__all__` assigned below the module level.")
            info.public = _literal_names(node.value)
            cut(node, [])
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and getattr(node.target, "id", None) == "__all__":
            raise ExportError(f"{module}:{node.lineno}: `__all__` changed after its assignment.")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    info.imported[alias.asname] = f"import {alias.name} as {alias.asname}"
                else:
                    info.imported[alias.name.split(".")[0]] = f"import {alias.name.split('.')[0]}"
        elif isinstance(node, ast.ImportFrom):
            if node.module != "__future__" and _target_module(module, is_package, node) is None:
                for alias in node.names:
                    info.imported[alias.asname or alias.name] = f"from {node.module} import {alias.name}"
        else:
            info.defined.update(dict.fromkeys(_bound_names(node), ast.dump(node)))

    for first, last, replacement in sorted(cuts, reverse=True):
        info.lines[first - 1 : last] = replacement
    return info


# ---- the bundle ------------------------------------------------------------------------------------------------------


def _closure(roots: Sequence[str]) -> dict[str, _ModuleInfo]:
    modules: dict[str, _ModuleInfo] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in modules:
            continue
        modules[name] = info = _read_module(name)
        pending.extend(sorted(info.top_level_deps | info.lazy_deps))
    return modules


def _module_order(roots: Sequence[str], modules: Mapping[str, _ModuleInfo]) -> list[str]:
    """Each module after those it imports at module level (depth first, in a fixed order)."""
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = " -> ".join((*chain[chain.index(name):], name))
            raise ExportError(f"import cycle at module level: {cycle}.")
        state[name] = "active"
        for dep in sorted(modules[name].top_level_deps):
            visit(dep, (*chain, name))
        state[name] = "done"
        order.append(name)

    for name in [*roots, *sorted(modules)]:
        visit(name, ())
    return order


def _namespace_names(info: _ModuleInfo) -> list[str]:
    """What `module.name` can read: its `__all__`, else its public module-level names, re-exports included."""
    if info.public is not None:
        return info.public
    return sorted(name for name in {*info.defined, *info.reexported} if not name.startswith("_"))


def _check_names(order: Sequence[str], modules: Mapping[str, _ModuleInfo],
                 namespaces: Mapping[str, tuple[str, list[str]]]) -> None:
    """One meaning per module-level name of the bundle."""
    owners: dict[str, str] = {}
    statements: dict[str, str] = {}
    imports: dict[str, tuple[str, str]] = {name: ("the bundle's header", stmt) for name, stmt in _HEADER_IMPORTS.items()}
    for name in order:
        info = modules[name]
        for bound, statement in info.imported.items():
            first = imports.setdefault(bound, (name, statement))
            if first[1] != statement:
                raise ExportError(f"`{bound}` is bound by `{first[1]}` in {first[0]} and by `{statement}` in {name}.")
        for bound, statement in info.defined.items():
            if statements.setdefault(bound, statement) != statement:
                raise ExportError(
                    f"`{bound}` is defined at module level in both {owners[bound]} and {name}, differently; the "
                    "bundle holds one module namespace, so rename one or import it from the other."
                )
            owners.setdefault(bound, name)
    for bound, (module, _) in namespaces.items():
        if bound in owners:
            raise ExportError(f"`{bound}` names the namespace of {module} and is defined in {owners[bound]}.")
        owners[bound] = f"the namespace of {module}"
    for bound, owner in owners.items():
        if bound in imports:
            raise ExportError(f"`{bound}` is defined in {owner} and imported in {imports[bound][0]}.")
        if hasattr(builtins, bound) and not bound.startswith("__"):
            raise ExportError(f"`{bound}` defined in {owner} would shadow the builtin for every module of the bundle.")


def _check_namespace_attributes(modules: Mapping[str, _ModuleInfo], namespaces: Mapping[str, tuple[str, list[str]]]):
    """Every `namespace.attribute` the modules read exists in the namespace the bundle builds."""
    for info in modules.values():
        bound_here = {bound for bound in info.namespaces}
        if not bound_here:
            continue
        tree = ast.parse("\n".join(info.lines))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound_here:
                module, names = namespaces[node.value.id]
                if node.attr not in names:
                    raise ExportError(
                        f"{info.name} reads `{node.value.id}.{node.attr}`, which the namespace of {module} lacks "
                        f"(it holds {', '.join(names)})."
                    )


def _namespace_statement(bound: str, names: Sequence[str]) -> list[str]:
    return [f"{bound} = types.SimpleNamespace(", *(f"    {name}={name}," for name in names), ")"]


@dataclass(frozen=True)
class Bundle:
    """The flattened code: `source`, the module name it is saved under (`name` + `.py`), the package modules in it."""

    name: str
    source: str
    modules: tuple[str, ...]


def build_bundle(roots: Iterable[str]) -> Bundle:
    """Flatten the package modules `roots` (dotted names, e.g. `"score_diffusers.pipelines.pipeline_score_guided"`) and
    every package module they import into one self-contained module; see the module docstring for the rules."""
    roots = list(dict.fromkeys(roots))
    modules = _closure(roots)
    order = _module_order(roots, modules)
    namespaces: dict[str, tuple[str, list[str]]] = {}
    for info in modules.values():
        for bound, module in info.namespaces.items():
            names = _namespace_names(modules[module])
            if bound in namespaces and namespaces[bound][0] != module:
                raise ExportError(f"`{bound}` names both the namespace of {namespaces[bound][0]} and of {module}.")
            namespaces[bound] = (module, names)
    _check_names(order, modules, namespaces)
    _check_namespace_attributes(modules, namespaces)
    futures = set().union(*(info.future for info in modules.values())) - {"annotations"}
    if futures:
        raise ExportError(f"`from __future__ import {', '.join(sorted(futures))}` is not supported by the bundle.")

    from . import __version__

    sections = []
    for name in order:
        info = modules[name]
        rule = "# " + "-" * 116
        section = [rule, f"# {info.path.relative_to(PACKAGE_DIR.parent).as_posix()}", rule]
        body = "\n".join(info.lines).strip("\n")
        if body:
            section += ["", body]
        for bound, (module, names) in sorted(namespaces.items()):
            if module == name:
                section += ["", *_namespace_statement(bound, names)]
        sections.append("\n".join(section))
    docstring = (
        f'"""The modules of {PACKAGE} {__version__} that this repository\'s pipeline and components need, flattened into\n'
        f"one file by `{PACKAGE}.export` from the package's own source; regenerate it rather than editing it.\n\n"
        f"Modules, in order: {', '.join(order)}.\n"
        '"""'
    )
    source = "\n\n\n".join([docstring + "\n\n" + _HEADER.rstrip("\n"), *sections]) + "\n"
    for match in _RELATIVE_IMPORT_LINE.finditer(source):
        line = source[: match.start()].count("\n") + 1
        raise ExportError(f"line {line} of the bundle reads as a relative import to Diffusers: {match.group(0)!r}.")
    compile(source, "<bundle>", "exec")
    digest = hashlib.sha256(source.encode()).hexdigest()[:_HASH_LENGTH]
    return Bundle(name=BUNDLE_PREFIX + digest, source=source, modules=tuple(order))


# ---- exporting a folder ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedCode:
    """What `export_code` wrote: the `custom_pipeline` name to load the folder with, the bundle, the files."""

    custom_pipeline: str
    bundle: str
    files: tuple[Path, ...]


def _read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / _MODEL_INDEX
    if not path.is_file():
        raise ExportError(f"{folder} is not a saved pipeline: it has no {_MODEL_INDEX}.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ExportError(f"{path} is not valid JSON: {error}.") from error


def _package_entries(model_index: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Component name -> (library, class) of the components whose class is this package's."""
    return {
        name: (entry[0], entry[1])
        for name, entry in model_index.items()
        if not name.startswith("_")
        and isinstance(entry, (list, tuple))
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and _is_package_name(entry[0])
    }


def _package_class(library: str, class_name: str, what: str) -> type:
    """`class_name` of the package module `library`; only this package's modules are ever imported."""
    if _module_file(library) is None:
        raise ExportError(f"{what}: {library} is not a module of {PACKAGE}.")
    klass = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(klass, type) or klass.__module__ != library:
        raise ExportError(f"{what}: {library} defines no class {class_name}.")
    return klass


def _component_stub(component: str, library: str, class_name: str, bundle: str, custom_pipeline: str) -> str:
    return f'''"""The `{component}` component's code for Diffusers' `trust_remote_code=True` loading, written by `{PACKAGE}.export`.

`model_index.json` names this component ["{library}", "{class_name}"]; Diffusers executes this file, named after
that library, as module `diffusers_modules.<namespace>.{library}`. The class comes from the bundle that the custom
pipeline `{custom_pipeline}.py` imports, in the same namespace, so that the pipeline and its components share one class.
"""

import importlib

_LIBRARY = "{library}"
_BUNDLE = "{bundle}"

if not __name__.endswith("." + _LIBRARY):
    raise ImportError(f"{{__name__}} is not loaded as Diffusers loads a component's code ({{_LIBRARY}}).")
try:
    _bundle = importlib.import_module(__name__[: -len(_LIBRARY)] + _BUNDLE)
except ImportError as error:
    raise ImportError(
        "Load this folder with DiffusionPipeline.from_pretrained(folder, custom_pipeline=\\"{custom_pipeline}\\", "
        "trust_remote_code=True): its components take their classes from the code that custom pipeline loads."
    ) from error

{class_name} = _bundle.{class_name}
'''


def _pipeline_stub(class_name: str, bundle: str, custom_pipeline: str, version: str) -> str:
    return f'''"""The custom pipeline of this repository for Diffusers, written by `{PACKAGE}.export` ({PACKAGE} {version}):

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(repo, custom_pipeline="{custom_pipeline}", trust_remote_code=True)

The code is {PACKAGE}'s own, flattened into `{bundle}.py`; with {PACKAGE} installed,
`{class_name}.from_pretrained(repo)` loads the same folder without running any of it.
"""

from .{bundle} import {class_name}

__all__ = ["{class_name}"]
'''


def custom_pipeline_name(pipeline_class: type) -> str:
    """The `custom_pipeline=` name an exported folder of `pipeline_class` loads with: its module's own name,
    e.g. `"pipeline_score_guided"`."""
    return pipeline_class.__module__.rpartition(".")[2]


def export_code(folder: str | os.PathLike) -> ExportedCode:
    """Write the code that lets stock Diffusers load the pipeline saved in `folder` into `folder` (see the module
    docstring for the layout). `folder` is what `save_pretrained` of one of this package's pipelines wrote; its
    `model_index.json` and weights are left as they are. Files of an earlier export are replaced.

    Args:
        folder (`str` or `os.PathLike`): a pipeline folder saved by `ScoreGuidedPipeline.save_pretrained` (or by one
            of its subclasses').

    Returns:
        `ExportedCode` with `custom_pipeline`, the name to pass to `DiffusionPipeline.from_pretrained`.
    """
    from . import __version__, pipelines

    folder = Path(folder)
    model_index = _read_model_index(folder)
    class_name = model_index.get("_class_name")
    pipeline_class = getattr(pipelines, class_name, None) if isinstance(class_name, str) else None
    if not isinstance(pipeline_class, type):
        raise ExportError(
            f"{folder / _MODEL_INDEX} names the pipeline {class_name!r}, which is not a pipeline of {PACKAGE}."
        )
    entries = _package_entries(model_index)
    for component, (library, component_class) in entries.items():
        _package_class(library, component_class, f"component `{component}` of {folder / _MODEL_INDEX}")
        if not (folder / component).is_dir():
            raise ExportError(f"{folder} has no folder `{component}` for the component of {_MODEL_INDEX}.")
    bundle = build_bundle([pipeline_class.__module__, *(library for library, _ in entries.values())])
    custom_pipeline = custom_pipeline_name(pipeline_class)

    for stale in folder.glob(f"{BUNDLE_PREFIX}*.py"):
        stale.unlink()
    written = {
        folder / f"{bundle.name}.py": bundle.source,
        folder / f"{custom_pipeline}.py": _pipeline_stub(class_name, bundle.name, custom_pipeline, __version__),
    }
    for component, (library, component_class) in entries.items():
        written[folder / component / f"{library}.py"] = _component_stub(
            component, library, component_class, bundle.name, custom_pipeline
        )
    for path, text in written.items():
        path.write_text(text, encoding="utf-8")
    return ExportedCode(custom_pipeline=custom_pipeline, bundle=bundle.name, files=tuple(written))


def save_pretrained_with_code(pipeline, save_directory: str | os.PathLike, **kwargs: Any) -> ExportedCode:
    """`pipeline.save_pretrained(save_directory, **kwargs)`, then `export_code(save_directory)`. Upload the folder
    afterwards (e.g. `huggingface_hub.upload_folder`): `push_to_hub=True` would upload it before the code is in it."""
    if kwargs.get("push_to_hub"):
        raise ValueError(
            "`push_to_hub=True` uploads before the code is written; save with code, then upload the folder "
            "(`huggingface_hub.upload_folder(repo_id=..., folder_path=save_directory)`)."
        )
    pipeline.save_pretrained(save_directory, **kwargs)
    return export_code(save_directory)


# ---- loading an exported folder with this package ------------------------------------------------------------------

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def package_components(pipeline_class: type, pretrained_model_name_or_path: Any, kwargs: Mapping[str, Any]) -> dict:
    """The components of a pipeline folder (or Hub repository) that also ships them as code (written by
    `export_code`), built from this package's own classes, for `pipeline_class.from_pretrained` to pass in:
    Diffusers would otherwise execute `<component>/<library>.py` for them, and refuse it without
    `trust_remote_code`. Components the caller passes in `kwargs` are left to the caller; anything that is not such a
    folder gives `{}` and is left to Diffusers' own loading and errors.
    """
    source = os.fspath(pretrained_model_name_or_path) if isinstance(pretrained_model_name_or_path, os.PathLike) \
        else pretrained_model_name_or_path
    if not isinstance(source, str):
        return {}
    folder = Path(source)
    if not folder.is_dir():
        if not _HUB_ID.match(source):
            return {}
        try:
            # Downloads what `from_pretrained` downloads next (that call then finds it cached); no code runs.
            folder = Path(pipeline_class.download(source, **kwargs))
        except Exception:  # noqa: BLE001 - `from_pretrained` reports the same failure in its own words.
            return {}
    try:
        model_index = json.loads((folder / _MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    components = {}
    for component, (library, class_name) in _package_entries(model_index).items():
        if component in kwargs or not (folder / component / f"{library}.py").is_file():
            continue
        klass = _package_class(library, class_name, f"component `{component}` of {folder / _MODEL_INDEX}")
        load_kwargs: dict[str, Any] = {"subfolder": component}
        if hasattr(klass, "dtype"):  # a model: the dtype and variant `from_pretrained` was asked for
            component_dtype = dtype.get(component, dtype.get("default")) if isinstance(dtype, dict) else dtype
            if component_dtype is not None:
                load_kwargs["dtype"] = component_dtype
            if kwargs.get("variant") is not None:
                load_kwargs["variant"] = kwargs["variant"]
        components[component] = klass.from_pretrained(str(folder), **load_kwargs)
    return components
