"""`score_diffusers.export`: a saved pipeline's code for stock Diffusers, loaded where `score_diffusers` is absent.

The stock load runs in a subprocess that cannot import `score_diffusers`: `python -I` (no PYTHONPATH, no user site, no
script folder on `sys.path`) with an import hook refusing `score_diffusers` first thing, because the package is
installed in editable mode in this interpreter's site-packages, which `-I` still reads. The same script runs in a
fresh virtual environment that has only torch and Diffusers when `SCORE_DIFFUSERS_STOCK_PYTHON` names its python;
building one takes about a minute and the package registry, which the default suite does without:

    python -m venv /tmp/stock && /tmp/stock/bin/pip install torch==2.13.0 diffusers==0.42.1
    SCORE_DIFFUSERS_STOCK_PYTHON=/tmp/stock/bin/python pytest tests/test_export.py

Both load from local folders laid out like the Hub repository, offline (`HF_HUB_OFFLINE=1`), with a dynamic-module
cache of their own, and must give the package's samples bit for bit with the same generators.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from helpers import tiny_unet

import score_diffusers
from score_diffusers import (
    AnnealedLangevinScheduler,
    NoiseConditionalClassifier,
    PredictorCorrectorScheduler,
    ProbabilityFlowScheduler,
    ScoreGuidedPipeline,
    ScoreInpaintPipeline,
    SDEDPMSolverScheduler,
)
from score_diffusers.export import ExportError, build_bundle, export_code, save_pretrained_with_code
from score_diffusers.flatten import FlattenError, flatten_modules
from score_diffusers.schedulers import SCHEDULERS

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(score_diffusers.__file__).resolve().parent
STOCK_PYTHON_VARIABLE = "SCORE_DIFFUSERS_STOCK_PYTHON"
SEEDS = (0, 1)
CASE_NAMES = ("pc", "pf-vp", "sde-dpm", "langevin", "guided", "inpaint", "other-version")
PIPELINE_CLASSES = {name: ScoreInpaintPipeline if name == "inpaint" else ScoreGuidedPipeline for name in CASE_NAMES}

# What the stock script does: refuse `score_diffusers`, load every case with Diffusers' custom-pipeline loading,
# sample with per-image generators, load the first case again and sample its first pipeline once more (both entry
# files are re-executed on every load), and report what it imported.
STOCK_SCRIPT = textwrap.dedent(
    '''
    import importlib.abc, json, sys
    from pathlib import Path


    class RefuseScoreDiffusers(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "score_diffusers" or name.startswith("score_diffusers."):
                raise ModuleNotFoundError(f"No module named {name!r} (refused)", name=name)
            return None


    sys.meta_path.insert(0, RefuseScoreDiffusers())
    try:
        import score_diffusers  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("score_diffusers is importable")

    import numpy as np
    import torch
    from diffusers import DiffusionPipeline

    spec = json.loads(Path(sys.argv[1]).read_text())
    out = Path(spec["out"])


    def sample(pipe, case):
        call = {k: torch.from_numpy(np.load(v)) if isinstance(v, str) and v.endswith(".npy") else v
                for k, v in case["call"].items()}
        generator = [torch.Generator().manual_seed(seed) for seed in case["seeds"]]
        return pipe(**call, generator=generator, output_type="latent").images.numpy()


    def load(case):
        pipe = DiffusionPipeline.from_pretrained(case["folder"], custom_pipeline=case["custom_pipeline"],
                                                 trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe


    report = {"cases": {}}
    pipes = {}
    for case in spec["cases"]:
        pipe = pipes[case["name"]] = load(case)
        images = sample(pipe, case)
        np.save(out / f"{case['name']}.npy", images)
        bundle = sys.modules[type(pipe).__module__]
        report["cases"][case["name"]] = {
            "pipeline": f"{type(pipe).__module__}.{type(pipe).__name__}",
            "components": {name: f"{type(c).__module__}.{type(c).__name__}" for name, c in pipe.components.items()
                           if c is not None},
            "scheduler_is_the_bundles": type(pipe.scheduler) is getattr(bundle, type(pipe.scheduler).__name__),
            "another_version": getattr(bundle, "ANOTHER_VERSION", False),
            "shape": list(images.shape),
        }
    first = spec["cases"][0]
    again = load(first)
    report["first_again_equal"] = bool(np.array_equal(sample(again, first), np.load(out / f"{first['name']}.npy")))
    report["first_pipe_again_equal"] = bool(
        np.array_equal(sample(pipes[first["name"]], first), np.load(out / f"{first['name']}.npy"))
    )
    report["imported_score_diffusers"] = sorted(
        m for m in sys.modules if m == "score_diffusers" or m.startswith("score_diffusers.")
    )
    package_dir = Path(spec["package_dir"])
    report["package_files_loaded"] = sorted(
        str(m.__file__) for m in list(sys.modules.values())
        if getattr(m, "__file__", None) and Path(m.__file__).resolve().is_relative_to(package_dir)
    )
    report["diffusers"] = __import__("diffusers").__version__
    report["torch"] = torch.__version__
    print("REPORT " + json.dumps(report))
    '''
)


def _tiny_classifier() -> NoiseConditionalClassifier:
    torch.manual_seed(1)
    return NoiseConditionalClassifier(
        sample_size=8, in_channels=1, num_classes=3, block_out_channels=(8,), norm_num_groups=4
    ).eval()


def _inpaint_inputs(folder: Path) -> dict[str, str]:
    generator = torch.Generator().manual_seed(3)
    image = torch.rand((2, 1, 8, 8), generator=generator)
    mask = torch.zeros((2, 1, 8, 8))
    mask[..., 2:6, 2:6] = 1
    np.save(folder / "image.npy", image.numpy())
    np.save(folder / "mask.npy", mask.numpy())
    return {"image": str(folder / "image.npy"), "mask_image": str(folder / "mask.npy")}


def _cases() -> dict[str, tuple]:
    """name -> (pipeline class, scheduler, classifier, call arguments besides the generator)."""
    plain = {"batch_size": len(SEEDS), "num_inference_steps": 3}
    return {
        "pc": (ScoreGuidedPipeline, PredictorCorrectorScheduler(), None, plain),
        "pf-vp": (ScoreGuidedPipeline, ProbabilityFlowScheduler(sde_type="vp"), None, plain),
        "sde-dpm": (ScoreGuidedPipeline, SDEDPMSolverScheduler(), None, plain),
        "langevin": (ScoreGuidedPipeline, AnnealedLangevinScheduler(), None, plain),
        "guided": (ScoreGuidedPipeline, ProbabilityFlowScheduler(sde_type="vp"), _tiny_classifier(),
                   {**plain, "class_labels": [0, 2], "guidance_scale": 2.0}),
        "inpaint": (ScoreInpaintPipeline, PredictorCorrectorScheduler(sde_type="vp"), None,
                    {"method": "replacement", "num_inference_steps": 3}),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, dict]:
    """Every case saved by its pipeline and exported: name -> folder, custom pipeline, call, the package's samples."""
    root = tmp_path_factory.mktemp("exported")
    cases = {}
    for name, (pipeline_class, scheduler, classifier, call) in _cases().items():
        folder = root / name
        pipe = pipeline_class(unet=tiny_unet(), scheduler=scheduler, classifier=classifier)
        code = save_pretrained_with_code(pipe, folder)
        if pipeline_class is ScoreInpaintPipeline:
            call = {**call, **_inpaint_inputs(root)}
        cases[name] = {"folder": str(folder), "custom_pipeline": code.custom_pipeline, "call": call, "seeds": SEEDS}
    cases["other-version"] = {**cases["pc"], "folder": str(_as_another_version(Path(cases["pc"]["folder"]),
                                                                                root / "other-version"))}
    assert list(cases) == list(CASE_NAMES)
    return cases


def _as_another_version(folder: Path, copy: Path) -> Path:
    """A copy of an exported folder whose bundle differs (as another version of the package would export it)."""
    shutil.copytree(folder, copy)
    (bundle,) = copy.glob("score_diffusers_bundle_*.py")
    other = f"score_diffusers_bundle_{'f' * 12}"
    (copy / f"{other}.py").write_text(bundle.read_text() + "\nANOTHER_VERSION = True\n")
    bundle.unlink()
    for stub in copy.rglob("*.py"):
        stub.write_text(stub.read_text().replace(bundle.stem, other))
    return copy


def _package_samples(case: dict, pipeline_class=ScoreGuidedPipeline) -> np.ndarray:
    pipe = pipeline_class.from_pretrained(case["folder"])
    pipe.set_progress_bar_config(disable=True)
    call = {k: torch.from_numpy(np.load(v)) if isinstance(v, str) and v.endswith(".npy") else v
            for k, v in case["call"].items()}
    generator = [torch.Generator().manual_seed(seed) for seed in case["seeds"]]
    return pipe(**call, generator=generator, output_type="latent").images.numpy()


def _stock_interpreters() -> list:
    venv = os.environ.get(STOCK_PYTHON_VARIABLE)
    return [
        pytest.param([sys.executable, "-I"], id="isolated"),
        pytest.param(
            [venv] if venv else None,
            id="venv",
            marks=pytest.mark.skipif(not venv, reason=f"{STOCK_PYTHON_VARIABLE} names no stock-Diffusers python"),
        ),
    ]


@pytest.fixture(scope="module", params=_stock_interpreters())
def stock_run(request, exported, tmp_path_factory) -> tuple[dict, Path]:
    """The stock script's report and its samples' folder, run once per interpreter."""
    work = tmp_path_factory.mktemp(f"stock-{request.param_index}")
    spec = {"cases": [{"name": name, **case} for name, case in exported.items()], "out": str(work),
            "package_dir": str(PACKAGE_DIR)}
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "stock.py").write_text(STOCK_SCRIPT)
    # A bare environment: no PYTHONPATH, offline, the Hub and the dynamic-module cache in the test's own folder.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(work), "HF_HOME": str(work / "hf"),
           "HF_MODULES_CACHE": str(work / "modules"), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    process = subprocess.run([*request.param, str(work / "stock.py"), str(work / "spec.json")], check=False, cwd=work,
                             env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-8000:]
    line = next(line for line in process.stdout.splitlines() if line.startswith("REPORT "))
    return json.loads(line.removeprefix("REPORT ")), work


# ---- stock Diffusers, without the package ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASE_NAMES)
def test_stock_diffusers_samples_what_the_package_samples(stock_run, exported, name):
    report, work = stock_run
    case_report = report["cases"][name]
    pipeline_class = PIPELINE_CLASSES[name]
    assert case_report["pipeline"].startswith("diffusers_modules.local.score_diffusers_bundle_")
    assert case_report["pipeline"].endswith("." + pipeline_class.__name__)
    assert case_report["scheduler_is_the_bundles"], case_report
    # Loaded after the others through the same module cache, where its stubs have the size of theirs: each folder
    # runs its own bundle.
    assert case_report["another_version"] == (name == "other-version")
    for component in ("scheduler", "classifier"):
        if component in case_report["components"]:
            assert case_report["components"][component].startswith("diffusers_modules.local.score_diffusers_bundle_")
    assert case_report["components"]["unet"] == "diffusers.models.unets.unet_2d.UNet2DModel"
    stock = np.load(work / f"{name}.npy")
    np.testing.assert_array_equal(stock, _package_samples(exported[name], pipeline_class))
    assert stock.shape == (len(SEEDS), 1, 8, 8) and np.isfinite(stock).all()


def test_stock_diffusers_imports_nothing_of_the_package(stock_run):
    report, _ = stock_run
    assert report["imported_score_diffusers"] == [] and report["package_files_loaded"] == []
    assert report["diffusers"].startswith("0.42")


def test_a_second_stock_load_leaves_the_first_pipeline_working(stock_run):
    report, _ = stock_run
    assert report["first_again_equal"] and report["first_pipe_again_equal"]


# ---- the package itself ----------------------------------------------------------------------------------------------


def test_plain_save_writes_no_code(tmp_path):
    ScoreGuidedPipeline(unet=tiny_unet(), scheduler=PredictorCorrectorScheduler()).save_pretrained(tmp_path)
    assert not list(tmp_path.rglob("*.py"))


def _poison_code(folder: Path) -> list[Path]:
    """Make every code file of `folder` fail loudly if it is ever executed."""
    files = sorted(folder.rglob("*.py"))
    for path in files:
        path.write_text(path.read_text() + '\nraise RuntimeError("the folder\'s code was executed")\n')
    return files


def test_package_loads_an_exported_folder_without_running_its_code(exported, tmp_path):
    folder = tmp_path / "guided"
    shutil.copytree(exported["guided"]["folder"], folder)
    assert len(_poison_code(folder)) == 4  # pipeline stub, bundle, scheduler and classifier code
    modules_before = {name for name in sys.modules if name.startswith("diffusers_modules")}
    pipe = ScoreGuidedPipeline.from_pretrained(folder)
    assert type(pipe.scheduler) is ProbabilityFlowScheduler and type(pipe.classifier) is NoiseConditionalClassifier
    assert {name for name in sys.modules if name.startswith("diffusers_modules")} == modules_before
    np.testing.assert_array_equal(_package_samples({**exported["guided"], "folder": str(folder)}),
                                  _package_samples(exported["guided"]))
    # A scheduler the caller passes replaces the saved one, as for any folder.
    chosen = ScoreGuidedPipeline.from_pretrained(folder, scheduler=SDEDPMSolverScheduler(sde_type="vp"))
    assert type(chosen.scheduler) is SDEDPMSolverScheduler
    for dtype in (torch.float64, {"classifier": torch.float64, "default": torch.float32}):
        assert ScoreGuidedPipeline.from_pretrained(folder, dtype=dtype).classifier.dtype == torch.float64


def test_package_loads_an_exported_hub_repository_without_running_its_code(exported, tmp_path, monkeypatch):
    folder = tmp_path / "snapshot"
    shutil.copytree(exported["pc"]["folder"], folder)
    _poison_code(folder)
    requested = []

    def download(cls, repo_id, **kwargs):
        requested.append(repo_id)
        return str(folder)

    monkeypatch.setattr(ScoreGuidedPipeline, "download", classmethod(download))
    pipe = ScoreGuidedPipeline.from_pretrained("someone/tiny-pc")
    assert type(pipe.scheduler) is PredictorCorrectorScheduler and set(requested) == {"someone/tiny-pc"}


def test_stock_loading_without_trust_remote_code_is_refused_before_any_code_runs(exported, tmp_path):
    folder = tmp_path / "pc"
    shutil.copytree(exported["pc"]["folder"], folder)
    _poison_code(folder)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(str(folder), custom_pipeline="pipeline_score_guided")


def test_export_layout(exported):
    folder = Path(exported["guided"]["folder"])
    index = json.loads((folder / "model_index.json").read_text())
    scheduler_library, scheduler_class = index["scheduler"]
    classifier_library, _ = index["classifier"]
    assert scheduler_class == "ProbabilityFlowScheduler"
    (bundle,) = folder.glob("score_diffusers_bundle_*.py")
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py")) == sorted(
        [bundle.name, "pipeline_score_guided.py", f"scheduler/{scheduler_library}.py",
         f"classifier/{classifier_library}.py"]
    )
    assert f"from .{bundle.stem} import ScoreGuidedPipeline" in (folder / "pipeline_score_guided.py").read_text()


def test_export_again_replaces_the_earlier_bundle(tmp_path):
    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=PredictorCorrectorScheduler())
    first = save_pretrained_with_code(pipe, tmp_path)
    (tmp_path / "score_diffusers_bundle_000000000000.py").write_text("stale = True\n")
    second = export_code(tmp_path)
    assert first == second and sorted(p.name for p in tmp_path.glob("score_diffusers_bundle_*.py")) == [
        f"{second.bundle}.py"
    ]


def test_save_with_code_refuses_to_push_before_the_code_is_written(tmp_path):
    pipe = ScoreGuidedPipeline(unet=tiny_unet(), scheduler=PredictorCorrectorScheduler())
    with pytest.raises(ValueError, match="uploads before the code is written"):
        save_pretrained_with_code(pipe, tmp_path / "repo", push_to_hub=True)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize(
    "model_index, message",
    [
        (None, "has no model_index.json"),
        ({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}, "not a pipeline of score_diffusers"),
        ({"_class_name": "ScoreGuidedPipeline",
          "scheduler": ["score_diffusers.schedulers.scheduling_predictor_corrector", "Nope"]}, "defines no class Nope"),
        ({"_class_name": "ScoreGuidedPipeline", "scheduler": ["score_diffusers.os", "system"]}, "not a module of"),
        ({"_class_name": "ScoreGuidedPipeline",
          "scheduler": ["score_diffusers.schedulers.scheduling_predictor_corrector", "math"]}, "defines no class"),
    ],
)
def test_export_refuses_what_is_not_a_pipeline_of_the_package(tmp_path, model_index, message):
    if model_index is not None:
        (tmp_path / "scheduler").mkdir()
        (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    with pytest.raises(ExportError, match=message):
        export_code(tmp_path)
    assert not list(tmp_path.rglob("*.py"))


# ---- the bundle ------------------------------------------------------------------------------------------------------


PIPELINE_NAMES = ("ScoreGuidedPipeline", "ScoreImg2ImgPipeline", "ScoreInpaintPipeline", "ScoreInverseProblemPipeline")


def _pipeline_bundle(name: str):
    """The bundle of pipeline `name` with every scheduler and model class of the package."""
    from score_diffusers import pipelines

    roots = [recipe.scheduler_class.__module__ for recipe in SCHEDULERS.values()]
    roots += ["score_diffusers.models.classifier", "score_diffusers.models.epsilon_to_score"]
    return build_bundle([getattr(pipelines, name).__module__, *roots])


def _import_bundle(bundle, tmp_path) -> types.ModuleType:
    path = tmp_path / f"{bundle.name}.py"
    path.write_text(bundle.source)
    spec = importlib.util.spec_from_file_location(f"bundle_test_{bundle.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


@pytest.mark.parametrize("pipeline_name", PIPELINE_NAMES)
def test_every_pipeline_bundles_into_one_self_contained_module(pipeline_name, tmp_path):
    """Guards the export as the package evolves: each pipeline's modules flatten, import nothing of the package, and
    the flattened schedulers step exactly like the package's."""
    bundle = _pipeline_bundle(pipeline_name)
    tree = ast.parse(bundle.source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("score_diffusers"), ast.unparse(node)
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("score_diffusers") for alias in node.names), ast.unparse(node)
    module = _import_bundle(bundle, tmp_path)
    assert issubclass(getattr(module, pipeline_name), DiffusionPipeline)
    for recipe in SCHEDULERS.values():
        ours = recipe.scheduler_class()
        theirs = getattr(module, recipe.scheduler_class.__name__).from_config(ours.config)
        for scheduler in (ours, theirs):
            scheduler.set_timesteps(4)
        torch.testing.assert_close(theirs.timesteps, ours.timesteps, rtol=0, atol=0)
        sample = torch.randn((2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
        steps = [
            scheduler.step(-sample / 2, scheduler.timesteps[0], sample, generator=torch.Generator().manual_seed(1))
            for scheduler in (ours, theirs)
        ]
        torch.testing.assert_close(steps[1].prev_sample, steps[0].prev_sample, rtol=0, atol=0)


def test_bundle_is_deterministic_and_named_by_its_text():
    roots = ["score_diffusers.pipelines.pipeline_score_guided"]
    first, second = build_bundle(roots), build_bundle(roots)
    assert first == second and first.name.startswith("score_diffusers_bundle_")
    import hashlib

    assert first.name.endswith(hashlib.sha256(first.source.encode()).hexdigest()[:12])


# ---- the flattening rules, on a package of their own -----------------------------------------------------------------


def _flatten(tmp_path, files: dict[str, str], roots=("fakepkg.top",)):
    root = tmp_path / "fakepkg"
    for name, text in {"__init__.py": "", **files}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return flatten_modules(roots, package="fakepkg", package_dir=root)


def _run(flattened, tmp_path) -> types.ModuleType:
    return _import_bundle(types.SimpleNamespace(name="flat", source=flattened.source), tmp_path)


def test_flattening_keeps_aliases_namespaces_and_lazy_imports(tmp_path):
    flattened = _flatten(tmp_path, {
        "core.py": """
            from __future__ import annotations
            import math

            def area(r: float) -> float:
                return math.pi * r * r
            """,
        "ops/__init__.py": """
            from .double import twice
            __all__ = ["twice"]
            """,
        "ops/double.py": """
            def twice(x):
                return 2 * x
            """,
        "late.py": """
            import logging
            logger = logging.getLogger("late")

            def late_value():
                return 42
            """,
        "top.py": """
            from __future__ import annotations
            import logging
            import math
            from . import ops
            from .core import area as disc_area

            logger = logging.getLogger("top")

            def value(r):
                if r < 0:
                    from .late import late_value
                else:
                    from .late import late_value as lv
                    return ops.twice(disc_area(r)) + lv()
                return late_value()
            """,
    })
    assert flattened.modules == ("fakepkg.core", "fakepkg.ops.double", "fakepkg.ops", "fakepkg.top", "fakepkg.late")
    module = _run(flattened, tmp_path)
    assert module.value(1.0) == pytest.approx(2 * 3.141592653589793 + 42) and module.value(-1) == 42
    assert module.ops.twice(3) == 6
    # Each module keeps its own logger: the later one is renamed.
    assert module.logger.name == "top" and module.logger__late.name == "late"


def test_flattening_renames_a_name_two_modules_bind_differently(tmp_path):
    flattened = _flatten(tmp_path, {
        "a.py": """
            Norm = "a's"
            open = "a's open"

            def read():
                return Norm, open
            """,
        "b.py": """
            from .a import read
            from .a import Norm as ANorm
            Norm = "b's"

            class Holder:
                Norm = "class attribute"
                label = Norm

                def method(self, Norm="parameter"):
                    return Norm, self.Norm

            def glob():
                return Norm, [Norm for _ in range(1)], (lambda: Norm)(), ANorm

            def shadowed(Norm=Norm):
                inner = [Norm for Norm in ("comprehension",)]
                return Norm, inner, {"Norm": 1}, dict(Norm=2)
            """,
        "top.py": """
            from .a import read
            from .b import Holder, glob, shadowed

            def everything():
                return read(), glob(), shadowed(), Holder.label, Holder().method(), open.__name__
            """,
    })
    module = _run(flattened, tmp_path)
    assert module.everything() == (
        ("a's", "a's open"),
        ("b's", ["b's"], "b's", "a's"),
        ("b's", ["comprehension"], {"Norm": 1}, {"Norm": 2}),
        "class attribute",
        ("parameter", "class attribute"),
        "open",  # the builtin: a's module-level `open` is renamed, not shadowing it for the others
    )
    assert "Norm__b = " in flattened.source and "open__a = " in flattened.source


@pytest.mark.parametrize(
    "files, message",
    [
        ({"a.py": "x = 1\n", "top.py": "from .a import *\n"}, "star import"),
        ({"a.py": "from .top import y\nx = 1\n", "top.py": "from .a import x\ny = 2\n"}, "import cycle"),
        ({"ns/__init__.py": "from .m import f\n__all__ = ['f']\n", "ns/m.py": "def f(): pass\n",
          "top.py": "from . import ns\nns.g()\n"}, "reads `ns.g`"),
        ({"a.py": "import json as j\n", "top.py": "import numpy as j\nfrom .a import j as k\n"},
         "bound by different imports"),
        ({"top.py": "import fakepkg.a\n"}, "import fakepkg"),
        ({"top.py": "from ...far import x\n"}, "leaves the package"),
        ({"top.py": "from . import __version__\n"}, "the package's top level"),
        ({"a.py": "x = 1\n", "top.py": "from .a import x\ndef f():\n    global x\n    x = 2\n"}, "global x"),
        ({"a.py": "y = 1\n", "top.py": "from .a import x\n"}, "has no module-level `x`"),
        ({"top.py": 'def f():\n    """\n    from .x import y\n    """\n'}, "reads as a relative import"),
    ],
)
def test_flattening_refuses_what_it_cannot_keep_faithful(tmp_path, files, message):
    with pytest.raises(FlattenError, match=message):
        _flatten(tmp_path, files)


# ---- training's --push_to_hub and the model card ---------------------------------------------------------------------


def _training_hub():
    """`training.hub`, imported as the scripts import it, with Accelerate's state set up for its logger."""
    from accelerate import PartialState

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from training import hub

    PartialState()
    return hub


class _Accelerator:
    is_main_process = True

    def wait_for_everyone(self):
        pass

    def end_training(self):
        pass


def _hub_args(push: bool) -> argparse.Namespace:
    return argparse.Namespace(push_to_hub=push, hub_model_id="someone/tiny", hub_token=None, hub_private_repo=False,
                              dataset_name=None, num_grid_images=4, seed=0)


@pytest.mark.parametrize("push", [True, False])
def test_training_push_uploads_the_pipeline_with_its_code(tmp_path, monkeypatch, push):
    import huggingface_hub

    hub = _training_hub()
    uploads = []
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, **kwargs: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **kwargs: uploads.append(
        sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*.py"))))
    ScoreGuidedPipeline(unet=tiny_unet(), scheduler=PredictorCorrectorScheduler()).save_pretrained(tmp_path)
    hub.finish(_Accelerator(), _hub_args(push), tmp_path, lambda: tmp_path / "README.md")
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.py"))
    if push:
        assert uploads == [written] and "pipeline_score_guided.py" in written and len(written) == 3
    else:
        assert uploads == [] and written == []


def test_training_push_of_a_classifier_folder_writes_no_code(tmp_path, monkeypatch):
    hub = _training_hub()
    monkeypatch.setattr(hub, "push_to_hub", lambda args, output_dir: None)
    _tiny_classifier().save_pretrained(tmp_path)
    hub.finish(_Accelerator(), _hub_args(True), tmp_path, lambda: tmp_path / "README.md")
    assert not list(tmp_path.rglob("*.py"))


@pytest.mark.parametrize("push", [True, False])
def test_pipeline_card_says_how_to_load_both_ways(tmp_path, push):
    from huggingface_hub import ModelCard

    hub = _training_hub()

    class Data:
        description, num_channels, resolution = "tiny data", 1, 8

        def __len__(self):
            return 4

    result = types.SimpleNamespace(global_step=1, num_processes=1, images_per_second=1.0)
    hub.write_pipeline_card(_hub_args(push), tmp_path, title="Tiny", method="m", objective="o", script="s.py",
                            data=Data(), scheduler=PredictorCorrectorScheduler(), num_inference_steps=3,
                            result=result)
    text = ModelCard.load(tmp_path / "README.md").text
    assert 'ScoreGuidedPipeline.from_pretrained("someone/tiny")' in text
    stock = 'DiffusionPipeline.from_pretrained(\n    "someone/tiny", custom_pipeline="pipeline_score_guided", ' \
            "trust_remote_code=True\n)"
    assert (stock in text) == push
    assert ("export_code(" in text) == (not push)
