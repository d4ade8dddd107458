import re

import yaml

from conftest import REPO


def pip_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs/requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.split(r"==", line)
            pins[name.lower()] = version
    return pins


def test_conda_env_lists_the_same_pinned_packages_as_requirements():
    env = yaml.safe_load((REPO / "envs/mimprobe.yaml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = dict(line.lower().split("==") for line in pip_section)
    assert conda_pins == pip_pins()


def test_torch_pins_match_the_machines_wheels():
    pins = pip_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["snakemake"].startswith("9.") and pins["zarr"].startswith("3.")
