"""The install routes stay in step: pyproject.toml, environment.yml, the constraints and the CI script."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
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


# A stand-in for `make`: `make test` and `make check-widgets` print a runner's closing line and exit
# with FAKE_TEST_RC / FAKE_BROWSER_RC; the install targets do nothing.
FAKE_MAKE = """#!/usr/bin/env bash
for target in "$@"; do
  case "$target" in
    test) echo "3 passed in 0.01s"; exit "${FAKE_TEST_RC:-0}" ;;
    check-widgets)
      echo "PASS  01_lora: lora_explorer: draws"
      if [ "${FAKE_BROWSER_RC:-0}" != 0 ]; then
        echo "FAIL  01_lora: lora_explorer: changing 'rank' redraws: 4 -> 8, output 1a2b -> None (output did not change)"
      fi
      echo "widgets: 1 passed, ${FAKE_BROWSER_RC:-0} failed"
      exit "${FAKE_BROWSER_RC:-0}" ;;
  esac
done
"""


@pytest.mark.parametrize("test_rc, browser_rc", [(0, 0), (0, 1), (2, 0)])
def test_ci_fails_when_the_tests_or_the_browser_check_fail_and_says_what_broke(tmp_path, test_rc, browser_rc):
    (tmp_path / ".ci").mkdir()
    shutil.copy2(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "make").write_text(FAKE_MAKE)
    (bin_dir / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "EFFTRAIN_CHROMIUM": "/bin/sh",
           "FAKE_TEST_RC": str(test_rc), "FAKE_BROWSER_RC": str(browser_rc)}
    run = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], env=env, capture_output=True, text=True)
    output = run.stdout + run.stderr
    assert "3 passed" in output and "widgets: 1 passed" in output  # both ran, whatever the other did
    assert (run.returncode == 0) == (test_rc == browser_rc == 0), output
    assert ("make test exited 2" in output) == (test_rc == 2)
    if browser_rc:
        broke = output.split("the browser check exited 1; what broke:", 1)[1]
        assert "FAIL  01_lora: lora_explorer: changing 'rank' redraws" in broke
    else:
        assert "browser check exited" not in output


def test_ci_installs_debian_s_chromium_and_never_a_downloaded_browser():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "apt-get update" in ci and "apt-get install" in ci and " chromium" in ci
    assert "playwright install" not in ci
    assert ci.index("apt-get update") > ci.index('if [ ! -x "$chromium" ]')  # only when it is missing
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(r.startswith("playwright") for r in dev)
