"""Installed package versions, for manifests, reports and model cards (probed in one place)."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterable
from importlib import metadata


def package_versions(packages: Iterable[str], *, runtime: bool = True) -> dict[str, str]:
    """``{package: version}`` of those installed (absent ones are left out), with Python and the platform first."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()} if runtime else {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
