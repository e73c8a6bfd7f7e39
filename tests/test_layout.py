"""The report's boundaries (search/report/README.md): it never imports the Ray side (``search.tune``,
``ray``), directly or through another module, and never names a method: which methods are
baselines is the registry's ``role``."""
import ast
import subprocess
import sys
from pathlib import Path

from peft_core.registry import method_names

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "search" / "report"
# A string that happens to equal a method name but means something else carries this on its line.
NOT_A_METHOD = "# not a method name"


def modules() -> list[Path]:
    found = sorted(REPORT.rglob("*.py"))
    assert found, f"no modules under {REPORT}"
    return found


def _forbidden(module: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in ("ray", "search.tune"))


def _imports(tree: ast.AST, path: Path) -> list[str]:
    """Every module ``tree`` imports, relative imports resolved against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]  # `from .. import tune`
    return names


def test_report_modules_import_neither_ray_nor_the_tune_package():
    bad = [f"{path.relative_to(ROOT)}: {name}" for path in modules()
           for name in _imports(ast.parse(path.read_text()), path) if _forbidden(name)]
    assert not bad, "search/report must not import the Ray side:\n" + "\n".join(bad)


def test_report_modules_name_no_method():
    methods = set(method_names())
    assert {"linear", "full", "lora"} <= methods  # the registry is populated
    bad = []
    for path in modules():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in methods
                    and NOT_A_METHOD not in lines[node.lineno - 1]):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not bad, "method names belong to the registry (use roles):\n" + "\n".join(bad)


def test_importing_every_report_module_loads_neither_ray_nor_the_tune_package():
    script = """
import importlib, pkgutil, sys
import search.report
names = [m.name for m in pkgutil.walk_packages(search.report.__path__, "search.report.")]
for name in names:
    importlib.import_module(name)
print(len(names), sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "search.tune"))))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(count) >= 8 and loaded == "[]", done.stdout
