"""Synthetic chest X-ray studies: findings parsed from MeSH terms, rendered as frontal and lateral
radiographs, passed through per-site acquisition profiles; plus templated reports for tests."""

from fedmrg.data.synthetic.acquisition import STORAGES, AcquisitionProfile, apply_profile, site_profiles, write_view
from fedmrg.data.synthetic.anatomy import Anatomy, region_box, sample_anatomy
from fedmrg.data.synthetic.findings import (
    CATEGORIES,
    FINDING_KINDS,
    KIND_CATEGORY,
    REGIONS,
    Finding,
    finding_categories,
)
from fedmrg.data.synthetic.mesh_terms import findings_from_mesh, parse_mesh_term
from fedmrg.data.synthetic.render import render_study
from fedmrg.data.synthetic.reports import N_STYLES, synthetic_report, synthetic_reports

__all__ = [
    "CATEGORIES",
    "FINDING_KINDS",
    "KIND_CATEGORY",
    "N_STYLES",
    "REGIONS",
    "STORAGES",
    "AcquisitionProfile",
    "Anatomy",
    "Finding",
    "apply_profile",
    "finding_categories",
    "findings_from_mesh",
    "parse_mesh_term",
    "region_box",
    "render_study",
    "sample_anatomy",
    "site_profiles",
    "synthetic_report",
    "synthetic_reports",
    "write_view",
]
