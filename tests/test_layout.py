"""The package's architecture as tests: imports run one way, files stay small.

Layers, top to bottom (a module imports only its own package and the layers below):
  sam.cli -> sam.train / sam.report / sam.sharpness / sam.landscape -> sam.optim / sam.data
  / sam.models
  -> sam.distributed / sam.runtime / sam.results / sam.settings / sam.stored_config
  -> sam.errors
with these narrower rules: sam.optim imports nothing else of sam; the report never imports
training code; sharpness never imports the trainer (the landscape may use sharpness); no
entry point imports another.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sam"
MAX_LINES = 400

LEAVES = {"sam.errors", "sam.results", "sam.runtime", "sam.distributed", "sam.settings",
          "sam.stored_config"}
ALLOWED = {  # package -> the sam packages/modules it may import, besides itself
    "sam.errors": set(),
    "sam.results": {"sam.errors"},
    "sam.stored_config": {"sam.errors"},  # what a run directory's stored config may name
    "sam.runtime": {"sam.errors"},
    "sam.distributed": {"sam.errors", "sam.runtime"},
    "sam.settings": {"sam.errors"},  # the schema: plain types, read by everything below
    "sam.optim": set(),
    "sam.models": {"sam.errors"},  # models know nothing of SAM or training
    "sam.data": {"sam.errors", "sam.settings"},
    "sam.report": {"sam.results", "sam.errors"},
    "sam.sharpness": {"sam.optim", "sam.data", "sam.models"} | LEAVES,
    "sam.landscape": {"sam.data", "sam.models", "sam.sharpness"} | LEAVES,  # beside sharpness
    "sam.train": {"sam.optim", "sam.data", "sam.models", "sam.sharpness"} | LEAVES,
    "sam.cli": {"sam.train", "sam.report", "sam.sharpness", "sam.landscape"} | LEAVES,
    "sam": {"sam.optim"},  # sam/__init__.py: the public API, imported lazily
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _owner(module: str) -> str:
    """The unit of ALLOWED that ``module`` belongs to."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else "sam"


def _is_module(name: str) -> bool:
    return (ROOT / f"{name}.py").is_file() or (ROOT / name).is_dir()


def _sam_imports(path: Path) -> set[str]:
    """Every ``sam...`` module the file imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sam"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "sam":
                # `from sam import distributed` imports the module sam.distributed;
                # `from sam import __version__` only the (lazy) package root
                found |= ({f"sam.{a.name}" for a in node.names if _is_module(a.name)}
                          if node.module == "sam" else {node.module})
    return found


FILES = sorted(p for p in ROOT.rglob("*.py") if "configs" not in p.parts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_run_one_way(path):
    me = _owner(_module_name(path))
    bad = {i for i in _sam_imports(path) if _owner(i) != me and _owner(i) not in ALLOWED[me]
           and not (me == "sam" and i == "sam")}
    assert not bad, f"{me} may not import {sorted(bad)}"


def test_entry_points_do_not_import_each_other():
    for path in (ROOT / "cli").glob("*.py"):
        if path.stem in ("__init__", "__main__", "_hydra"):
            continue
        others = {f"sam.cli.{p.stem}" for p in (ROOT / "cli").glob("*.py")} - {
            f"sam.cli.{path.stem}", "sam.cli._hydra"}
        assert not _sam_imports(path) & (others | {"sam.cli"}), path.name


def test_sam_class_file_imports_only_torch():
    """The optimizer stands alone (davda54/sam's spirit): its file needs torch only."""
    import sam.optim

    path = Path(sam.optim.SAM.__module__.replace(".", "/") + ".py")
    tree = ast.parse((ROOT.parent / path).read_text())
    roots = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
             for a in n.names}
    roots |= {n.module.split(".")[0] for n in ast.walk(tree)
              if isinstance(n, ast.ImportFrom) and n.module and n.level == 0}
    assert roots <= {"torch", "__future__", "collections", "typing", "math"}, roots


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_files_read_in_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{lines} lines: split it by concern"


# The composed Hydra config is read once, at the edge (the console scripts and the trainer's
# runner); everything below takes typed settings (sam.settings) and plain values.
CONFIG_EDGE = {"sam/train/runner.py"} | {str(p.relative_to(ROOT.parent))
                                         for p in (ROOT / "cli").glob("*.py")}


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_only_the_edge_holds_a_dictconfig(path):
    if str(path.relative_to(ROOT.parent)) in CONFIG_EDGE:
        return
    tree = ast.parse(path.read_text())
    modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    modules |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in modules if m.split(".")[0] == "omegaconf"}, \
        "below the runner and the CLI nothing imports omegaconf: take sam.settings types"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"DictConfig", "ListConfig", "OmegaConf"}, path.name
