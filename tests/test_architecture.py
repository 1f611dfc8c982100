"""The house stays straight: the model and the planner run without MPI, no two modules import each other,
no file outgrows one idea, and no folder is named like build output."""
import os
import subprocess
import sys

import grimp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 420


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_the_planner_loads_no_mpi4py():
    p = _run("import sys, perfmodel.planner, perfmodel.report, hpcnn.geometry, hpcnn.plan\n"
             "assert 'mpi4py' not in sys.modules, sorted(m for m in sys.modules if 'mpi' in m)")
    assert p.returncode == 0, p.stderr


def test_hpcnn_plan_loads_no_mpi4py():
    p = _run("import sys\nfrom hpcnn import cli\n"
             "code = cli.main(['plan', '--model', 'meshnet', '--input', '18x256x256', '--batch', '2', '--ranks', '4',"
             " '--machine', 'vm-cpu'])\n"
             "assert code == 0\nassert 'mpi4py' not in sys.modules, 'hpcnn plan imported mpi4py'")
    assert p.returncode == 0, p.stderr + p.stdout[-2000:]


def test_no_two_modules_import_each_other():
    graph = grimp.build_graph("hpcnn", "perfmodel")
    cycles = []
    for module in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(module):
            if module < other and module in graph.find_modules_directly_imported_by(other):
                cycles.append((module, other))
    assert not cycles, f"modules importing each other: {cycles}"


def test_no_package_depends_on_itself_through_another():
    """No chain of imports leads from a package back into it through a different top-level package."""
    graph = grimp.build_graph("hpcnn", "perfmodel")
    packages = sorted({".".join(m.split(".")[:2]) for m in graph.modules if m.count(".") >= 1})
    for a in packages:
        for b in packages:
            if a < b and not a.startswith(b + ".") and not b.startswith(a + "."):
                both = (graph.chain_exists(a, b, as_packages=True) and graph.chain_exists(b, a, as_packages=True))
                assert not both, f"{a} and {b} depend on each other"


@pytest.mark.parametrize("package", ["hpcnn", "perfmodel"])
def test_no_file_holds_more_than_one_idea(package):
    long = []
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    n = sum(1 for _ in f)
                if n > MAX_LINES:
                    long.append(f"{os.path.relpath(path, ROOT)} ({n} lines)")
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_no_folder_is_named_like_build_output():
    bad = []
    for package in ("hpcnn", "perfmodel"):
        for folder, dirs, _ in os.walk(os.path.join(ROOT, package)):
            bad += [os.path.join(folder, d) for d in dirs if d in ("dist", "build")]
    assert not bad, bad
