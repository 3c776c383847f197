"""The software versions a job was built with, recorded in its ``meta.json`` and checked at each site.

A site whose installed ``fedmrg`` differs from the job's would run other code than the one the job's
config was written for (a message field renamed, a module added): it refuses the job's tasks with
one line that says which versions differ. A job that ships its code (``--ship-code``) changes nothing
where the package is installed: FLARE appends the job's ``custom/`` folder to the import path, so the
installed ``fedmrg`` is the one that runs and the one checked.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import fedmrg
from fedmrg.errors import ConfigError

FEDMRG_VERSION_KEY = "fedmrg_version"
NVFLARE_VERSION_KEY = "nvflare_version"


def installed_versions() -> dict[str, str]:
    """This process's fedmrg and nvflare versions, under the meta.json keys."""
    try:
        nvflare_version = version("nvflare")
    except PackageNotFoundError:
        nvflare_version = "not installed"
    return {FEDMRG_VERSION_KEY: fedmrg.__version__, NVFLARE_VERSION_KEY: nvflare_version}


def version_mismatches(job_meta: dict) -> list[str]:
    """One line per version the job records that differs from this site's (none recorded: none differ)."""
    here = installed_versions()
    return [
        f"{key}: the job was built with {job_meta[key]}, this site has {here[key]}"
        for key in (FEDMRG_VERSION_KEY, NVFLARE_VERSION_KEY)
        if job_meta.get(key) is not None and str(job_meta[key]) != here[key]
    ]


def check_job_versions(job_meta: dict) -> None:
    mismatches = version_mismatches(job_meta)
    if mismatches:
        raise ConfigError(
            "version mismatch (" + "; ".join(mismatches) + "): install the job's versions at this "
            "site (or remove fedmrg here and let byoc jobs bring it with --ship-code)"
        )
