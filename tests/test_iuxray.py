"""The IU X-ray archive: offline sourcing and the ecgen-radiology parser."""

import zipfile

import pytest

from conftest import report_xml, write_archive
from fedmrg.data.iuxray import parse_report_xml, read_archive, report_number, resolve_reports_archive
from fedmrg.errors import DataError


def test_parser_reads_sections_mesh_terms_and_images():
    xml = report_xml(
        uid="CXR4",
        findings="There are diffuse bilateral interstitial opacities.\n   Streaky  scarring.",
        impression="1. Bullous emphysema.",
        major=("Bullous Emphysema", "Opacity/lung/upper lobe/right/streaky"),
        automatic=("scarring",),
        n_images=3,
    )
    report = parse_report_xml(xml, "ecgen-radiology/4.xml")
    assert report.uid == "CXR4"
    assert (
        report.findings == "There are diffuse bilateral interstitial opacities. Streaky scarring."
    )  # whitespace normalised
    assert report.impression == "1. Bullous emphysema."
    assert report.indication.startswith("XXXX-year-old")
    assert report.mesh_major == ["Bullous Emphysema", "Opacity/lung/upper lobe/right/streaky"]
    assert report.mesh_automatic == ["scarring"]
    assert report.image_ids == ["CXR4_IM-0001-1001", "CXR4_IM-0001-2001", "CXR4_IM-0001-3001"]
    assert report.target_text() == report.findings
    assert report.target_text(include_impression=True).endswith("1. Bullous emphysema.")


def test_report_without_findings_has_no_target_text():
    report = parse_report_xml(report_xml(findings=None), "ecgen-radiology/2.xml")
    assert report.findings is None and report.target_text(include_impression=True) is None


@pytest.mark.parametrize(
    "data, message",
    [
        (b"<eCitation><uId id='X'/>", "ecgen-radiology/9.xml: not well-formed XML"),
        (b"<html></html>", "not an ecgen-radiology report"),
        (b"<eCitation></eCitation>", "no <uId"),
    ],
)
def test_malformed_xml_names_the_file(data, message):
    with pytest.raises(DataError, match=message):
        parse_report_xml(data, "ecgen-radiology/9.xml")


def test_archive_reading_skips_and_lists_broken_members(tmp_path):
    archive = write_archive(
        tmp_path / "reports.tgz",
        {
            "ecgen-radiology/10.xml": report_xml(uid="CXR10"),
            "ecgen-radiology/2.xml": report_xml(uid="CXR2"),
            "ecgen-radiology/3.xml": b"<eCitation>",
        },
    )
    reports, skipped = read_archive(archive, progress=False)
    assert [r.uid for r in reports] == ["CXR2", "CXR10"]  # study-number order
    assert len(skipped) == 1 and skipped[0].item == "ecgen-radiology/3.xml" and "well-formed" in skipped[0].reason
    assert report_number("ecgen-radiology/10.xml") == 10


def test_archive_sources_paths_wheels_and_bad_files(tmp_path):
    archive = write_archive(tmp_path / "NLMCXR_reports.tgz", {"ecgen-radiology/1.xml": report_xml()})
    assert resolve_reports_archive(archive, tmp_path / "cache") == archive
    wheel = tmp_path / "torchxrayvision-1.5.7-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(archive, "torchxrayvision/data/NLMCXR_reports.tgz")
    extracted = resolve_reports_archive(wheel, tmp_path / "cache")
    assert extracted.is_relative_to(tmp_path / "cache") and extracted.read_bytes() == archive.read_bytes()
    assert not (tmp_path / "cache" / "NLMCXR_reports.tgz").exists()  # the default's cache slot stays untouched
    assert resolve_reports_archive(f"file://{archive}", tmp_path / "cache2").read_bytes() == archive.read_bytes()

    empty = tmp_path / "empty.tgz"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(archive.read_bytes()[:40])
    no_reports = write_archive(tmp_path / "other.tgz", {"readme.txt": b"hello"})
    with pytest.raises(DataError, match="empty.tgz: the report archive is empty"):
        resolve_reports_archive(empty)
    with pytest.raises(DataError, match="truncated.tgz: corrupt or truncated"):
        resolve_reports_archive(truncated)
    with pytest.raises(DataError, match="other.tgz: no ecgen-radiology"):
        resolve_reports_archive(no_reports)
    with pytest.raises(DataError, match="not found"):
        resolve_reports_archive(tmp_path / "nope.tgz")
    with zipfile.ZipFile(tmp_path / "bad.whl", "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(DataError, match="bad.whl: the wheel has no torchxrayvision/data/NLMCXR_reports.tgz"):
        resolve_reports_archive(tmp_path / "bad.whl", tmp_path / "cache3")


@pytest.mark.network
def test_real_archive_from_the_torchxrayvision_wheel(real_archive):
    reports, skipped = read_archive(real_archive, progress=False)
    assert len(reports) == 3955 and not skipped
    first = reports[0]
    assert first.uid == "CXR1" and first.mesh_major == ["normal"] and len(first.image_ids) == 2
    assert first.findings.startswith("The cardiac silhouette and mediastinum size are within normal limits.")
    assert sum(1 for r in reports if r.findings) == 3425
