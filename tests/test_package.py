"""The package as it is installed: its layering (no library module imports the command line, no import
cycles at module level) and its wheel (built here, holding the bundled model, prompts and presets, and
working from another folder without the source tree)."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "wavslm"


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> set[str]:
    """The package modules one import statement loads (`from . import x` counts `x` when it is a module)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in known}
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    found = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    return found | ({base} if base in known and len(found) < len(node.names) else set())


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: top-level ones, and those in top-level try/if blocks
    other than `if TYPE_CHECKING:` (never run)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
    return found


def test_no_library_module_imports_the_command_line():
    known = _modules()
    offenders = []
    for module, path in known.items():
        if module == "wavslm.cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "wavslm.cli" in _imported(module, path, node, known):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"library modules import wavslm.cli: {offenders}"


def test_the_package_has_no_import_cycle_at_module_level():
    known = _modules()
    graph = {m: set().union(*(_imported(m, p, n, known) for n in _top_level_imports(ast.parse(p.read_text())))) - {m}
             for m, p in known.items()}
    # A package's own __init__ importing its submodules is how packages are built, not a cycle.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = 1
        for dep in sorted(graph[module]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [module, dep]
            if dep not in state and (cycle := visit(dep, path + [dep])):
                return cycle
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"  # a copy: building writes build/ and *.egg-info beside the sources
    skip = shutil.ignore_patterns(".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", "demo_out", "tests")
    shutil.copytree(REPO, source, ignore=skip)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(out)], check=True, capture_output=True, text=True)
    (wheel,) = out.glob("wavslm-*.whl")
    return wheel


@pytest.mark.slow
def test_the_wheel_ships_the_bundled_model_prompts_and_presets_and_runs_from_another_folder(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("assets/tiny/lm/config.json", "assets/tiny/lm/model.safetensors", "assets/tiny/codec/config.json",
                 "assets/tiny/codec/model.safetensors", "assets/tiny/README.md", "assets/prompts/real.wav",
                 "assets/prompts/synthetic.wav", "configs/tiny.yaml", "configs/paper_4k.yaml", "static/index.html"):
        assert f"wavslm/{name}" in names, name
    # Installed (not editable) beside the dependencies this environment has, run from an unrelated folder
    # with no network: the package must find its data by itself.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, text=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    where = subprocess.run([sys.executable, "-c", "import wavslm; print(wavslm.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(target), where
    demo = subprocess.run([sys.executable, "-m", "wavslm.cli", "demo", "-o", "d", "--seconds", "1"], cwd=elsewhere,
                          env=env, capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stderr[-2000:]
    assert (elsewhere / "d" / "real" / "continuation.wav").is_file() and (elsewhere / "d" / "report.md").is_file()
    presets = subprocess.run([sys.executable, "-c", "from wavslm.recipe import resolve_recipe; "
                              "from wavslm.pretrained import preset_path; resolve_recipe('tiny', []); "
                              "print(preset_path('paper_4k'))"], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert presets.returncode == 0, presets.stderr[-2000:]
    assert Path(presets.stdout.strip()).is_relative_to(target)


def test_the_server_imports_point_one_way_and_only_the_web_layer_knows_fastapi():
    known = _modules()
    order = ["wavslm.serve.limits", "wavslm.serve.access", "wavslm.serve.engine", "wavslm.serve.ws", "wavslm.serve.app",
             "wavslm.serve.command"]
    # The web layer may import the web framework; the command runs it under uvicorn; nothing else may.
    allowed = {"wavslm.serve.ws": {"fastapi", "starlette"}, "wavslm.serve.app": {"fastapi", "starlette"},
               "wavslm.serve.command": {"uvicorn"}}
    for module in order:
        tree = ast.parse(known[module].read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        siblings = set().union(*(_imported(module, known[module], n, known) for n in imports)) & set(order)
        assert all(order.index(s) < order.index(module) for s in siblings), (module, siblings)
        outside = {a.name.split(".")[0] for n in imports if isinstance(n, ast.Import) for a in n.names}
        outside |= {(n.module or "").split(".")[0] for n in imports if isinstance(n, ast.ImportFrom) and not n.level}
        web = outside & {"fastapi", "starlette", "uvicorn"}
        assert web <= allowed.get(module, set()), (module, web)
