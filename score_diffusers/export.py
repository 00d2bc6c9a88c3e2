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

The bundle is made from this package's source at export time (one source of truth, `score_diffusers.flatten`): the
modules the pipeline and component classes import, followed transitively and flattened into one namespace with each
binding's meaning kept. What cannot be flattened faithfully raises an `ExportError` naming the module and line, so the
package's test suite catches a change that would break the export.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .flatten import FlattenError, flatten_modules

PACKAGE = __name__.rpartition(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent
BUNDLE_PREFIX = f"{PACKAGE}_bundle_"
_HASH_LENGTH = 12
_MODEL_INDEX = "model_index.json"
# Package modules the bundle leaves out, with what the names a function imports from them become. This module itself:
# in the bundle, `from_pretrained` finds no component to build from the package, and Diffusers' own loading applies.
_LEFT_OUT: dict[str, dict[str, str]] = {__name__: {"package_components": "lambda pipeline_class, source, kwargs: {}"}}


class ExportError(ValueError):
    """The folder or the package's source cannot be exported as self-contained code."""


# ---- the bundle ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bundle:
    """The flattened code: `source`, the module name it is saved under (`name` + `.py`), the package modules in it."""

    name: str
    source: str
    modules: tuple[str, ...]


def build_bundle(roots: Iterable[str]) -> Bundle:
    """The package modules `roots` (dotted names, e.g. `"score_diffusers.pipelines.pipeline_score_guided"`) and every
    package module they import, flattened into one self-contained module (`score_diffusers.flatten`), named after a
    hash of its text."""
    from . import __version__

    docstring = (
        f"The modules of {PACKAGE} {__version__} that a saved pipeline needs, flattened into one file by\n"
        f"`{PACKAGE}.export` from the package's own source; regenerate it rather than editing it.\n"
    )
    try:
        flattened = flatten_modules(roots, package=PACKAGE, package_dir=PACKAGE_DIR, left_out=_LEFT_OUT,
                                    docstring=docstring)
    except FlattenError as error:
        raise ExportError(f"{PACKAGE} cannot be exported as self-contained code: {error}") from error
    digest = hashlib.sha256(flattened.source.encode()).hexdigest()[:_HASH_LENGTH]
    return Bundle(name=BUNDLE_PREFIX + digest, source=flattened.source, modules=flattened.modules)


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
        and entry[0].startswith(PACKAGE + ".")
    }


def _package_class(library: str, class_name: str, what: str) -> type:
    """`class_name` of the package module `library`; only this package's modules are ever imported."""
    parts = library.split(".")
    if parts[0] != PACKAGE or len(parts) < 2 or not all(part.isidentifier() for part in parts) \
            or not PACKAGE_DIR.joinpath(*parts[1:]).with_suffix(".py").is_file():
        raise ExportError(f"{what}: {library} is not a module of {PACKAGE}.")
    klass = getattr(importlib.import_module(library), class_name, None)
    if not isinstance(klass, type) or klass.__module__ != library:
        raise ExportError(f"{what}: {library} defines no class {class_name}.")
    return klass


# Both stubs import the bundle by the name their file's text gives when it runs, not by a name compiled into them:
# Diffusers copies every local folder's files into one cache folder, and Python may run the cached compilation of an
# earlier copy of a same-sized file there (its check is the file's size and modification second), e.g. the stub of a
# folder exported by another version of this package and loaded just before.


def _component_stub(component: str, library: str, class_name: str, bundle: str, custom_pipeline: str) -> str:
    return f'''"""The `{component}` component's code for Diffusers' `trust_remote_code=True` loading ({PACKAGE}.export).

`model_index.json` names this component ["{library}", "{class_name}"]; Diffusers executes this file, named after
that library, as module `diffusers_modules.<namespace>.{library}`. The class comes from the bundle that the custom
pipeline `{custom_pipeline}.py` imports, in the same namespace, so that the pipeline and its components share one class.
"""

import importlib
import re
from pathlib import Path

_LIBRARY = "{library}"
_BUNDLE = "{bundle}"

if not __name__.endswith("." + _LIBRARY):
    raise ImportError(f"{{__name__}} is not loaded as Diffusers loads a component's code ({{_LIBRARY}}).")
# The bundle this file names, read from the file itself (see the custom pipeline's file).
_BUNDLE = re.search(r'^_BUNDLE = "(\\w+)"', Path(__file__).read_text(encoding="utf-8"), re.MULTILINE).group(1)
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
    return f'''"""The custom pipeline of this repository for Diffusers, by `{PACKAGE}.export` ({PACKAGE} {version}):

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(repo, custom_pipeline="{custom_pipeline}", trust_remote_code=True)

The code is {PACKAGE}'s own, flattened into `{bundle}.py`; with {PACKAGE} installed,
`{class_name}.from_pretrained(repo)` loads the same folder without running any of it.
"""

import importlib
import re
from pathlib import Path

# Diffusers copies the file this line imports beside this one in its module cache.
from .{bundle} import {class_name}

# The class is taken from the bundle this file's text names: Python may run the cached compilation of an earlier,
# same-sized copy of this file in that cache (another folder's, exported by another version), whose import above
# named another bundle.
_BUNDLE = re.search(r"^from \\.(\\w+) import", Path(__file__).read_text(encoding="utf-8"), re.MULTILINE).group(1)
{class_name} = importlib.import_module(f"{{__package__}}.{{_BUNDLE}}").{class_name}

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
    # The models come along whatever the folder holds, so that one version's bundle of a pipeline is one file.
    bundle = build_bundle([pipeline_class.__module__, f"{PACKAGE}.models", *(lib for lib, _ in entries.values())])
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
