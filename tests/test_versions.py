"""A site refuses a job built for other software versions, and says which."""

from __future__ import annotations

import pytest

from fedmrg.errors import ConfigError
from fedmrg.versions import check_job_versions, installed_versions, version_mismatches


def test_a_job_of_the_same_versions_or_without_any_passes():
    check_job_versions(installed_versions())
    check_job_versions({"name": "fedmrg"})  # jobs exported before versions were recorded


def test_a_job_of_another_fedmrg_version_is_refused_with_both_versions():
    meta = {**installed_versions(), "fedmrg_version": "9.9.9"}
    assert len(version_mismatches(meta)) == 1
    with pytest.raises(ConfigError, match=r"fedmrg_version: the job was built with 9\.9\.9, this site has"):
        check_job_versions(meta)
