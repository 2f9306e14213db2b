"""The package layers hold: domain code loads without Celery, and the import contract in
``pyproject.toml`` (``lint-imports``, run by ``scripts/test``) fails on an upward import or on
one queue room importing another."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# The packages the contract covers, copied for the tests that break it on purpose.
PACKAGES = [
    "drydock",
    "tasks",
    "dispatch",
    "workers",
    "beat_schedules",
    "catalog",
    "policy",
    "adapters",
    "evidence",
    "models",
    "kernel",
    "bench",
    "testkit",
    "tests",
]


def domain_modules() -> list[str]:
    """Every module of the queue rooms but their Celery task modules."""
    modules = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        if path.name in ("celery_tasks.py", "__init__.py"):
            continue
        modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    return modules


def loaded_after_import(module: str) -> set[str]:
    code = (
        f"import sys, {module}\n"
        "print('\\n'.join(m for m in sys.modules if m == 'celery' or m.startswith('celery.')"
        " or m == 'workers.app' or m == 'workers.base_task'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(result.stdout.split())


def test_the_domain_modules_are_found() -> None:
    modules = domain_modules()
    assert "tasks.builds.domain" in modules and "tasks.remediation.domain" in modules
    assert not [m for m in modules if m.endswith("celery_tasks")]


@pytest.mark.parametrize("module", domain_modules())
def test_importing_domain_code_loads_neither_celery_nor_the_app(module: str) -> None:
    assert loaded_after_import(module) == set()


@pytest.mark.parametrize("module", ["dispatch.enqueue", "dispatch.chord", "kernel.context"])
def test_the_dispatch_path_and_the_job_context_load_without_celery(module: str) -> None:
    assert loaded_after_import(module) == set()


def test_a_celery_task_module_does_load_the_app() -> None:
    # The check above can see Celery: a task module, which must register with the app, loads it.
    assert "workers.app" in loaded_after_import("tasks.canary.celery_tasks")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tree)},
    )


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and the contract, copied so a test can add a forbidden import."""
    tree = tmp_path_factory.mktemp("tree")
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__", "data")
        )
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def with_import(tree: Path, module_file: str, statement: str) -> Path:
    path = tree / module_file
    original = path.read_text()
    path.write_text(original + f"\n{statement}\n")
    return path


def test_the_contract_holds_on_the_tree_as_it_is(tree_copy: Path) -> None:
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout


@pytest.mark.parametrize(
    ("module_file", "statement", "broken"),
    [
        # models reaching up into a queue room
        ("models/db.py", "import tasks.builds.domain", "models is not allowed to import tasks"),
        # the kernel reaching up into the Celery runtime
        ("kernel/errors.py", "import workers.app", "kernel is not allowed to import workers"),
        # one queue room importing another
        (
            "tasks/builds/domain.py",
            "import tasks.pushes.domain",
            "tasks.builds is not allowed to import tasks.pushes",
        ),
        # the benchmarks borrowing from the tests
        ("bench/throughput.py", "import tests.conftest", "bench is not allowed to import tests"),
    ],
)
def test_the_contract_fails_on_an_upward_or_sideways_import(
    tree_copy: Path, module_file: str, statement: str, broken: str
) -> None:
    path = tree_copy / module_file
    original = path.read_text()
    try:
        with_import(tree_copy, module_file, statement)
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0
    assert broken in result.stdout, result.stdout
