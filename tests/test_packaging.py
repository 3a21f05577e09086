"""Packaging: pyproject.toml as setuptools (the build backend) reads it, and the lock beside it."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

from setuptools.config.pyprojecttoml import apply_configuration
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent.parent


def test_setuptools_reads_the_project_table_without_a_warning() -> None:
    """``license = {text = ...}`` (a TOML table) is deprecated since setuptools 77: an SPDX string is not."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert dist.get_name() == "spend-exporter"


def test_every_extra_is_in_the_lock() -> None:
    """``uv sync --locked --all-extras`` installs every extra a user can ask for, at locked versions."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (ours,) = [p for p in lock["package"] if p["name"] == "spend-exporter"]
    assert set(ours["optional-dependencies"]) == set(project["optional-dependencies"])
    assert all(p.get("version") for p in lock["package"] if p["name"] != "spend-exporter")
