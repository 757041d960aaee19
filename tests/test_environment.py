"""The install routes stay in step: pyproject.toml, environment.yml, the constraints and the CI script."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = set(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements |= set(extra)
    return requirements


def conda_pip_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml should have exactly one pip: section"
    return {r for r in pip_sections[0] if not r.startswith("-e")}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    ours, conda = pyproject_requirements(), conda_pip_requirements()
    assert conda == ours, f"only in pyproject: {sorted(ours - conda)}; only in environment.yml: {sorted(conda - ours)}"


def test_environment_yml_installs_the_course_package_and_its_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python.split("=")[1] == required.removeprefix(">=")


def test_torch_is_a_range_in_the_package_and_pinned_only_for_the_cpu_route():
    requirements = pyproject_requirements()
    torch = next(r for r in requirements if re.match(r"torch\b", r))
    assert ">=" in torch and "==" not in torch, "GPU users need CUDA builds: keep torch a range"
    assert re.search(r"^torch==\d", (ROOT / "constraints-cpu.txt").read_text(), re.M)


def test_ci_runs_the_readme_test_command_on_the_cpu_route():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme
    assert "EFFTRAIN_TORCH=cpu" in ci
