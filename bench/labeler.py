"""Labeler figures: speed on the 3,955 IU X-ray reports and agreement with NLM's MeSH coding.

    python bench/labeler.py                  # the development half (odd-numbered reports)
    python bench/labeler.py --reports even   # the held-out half: run it to judge the labeler

The labeler was developed only on the odd-numbered reports; the even ones are held out.
"""

from __future__ import annotations

import argparse
import time

from fedmrg.data.iuxray import read_archive, resolve_reports_archive
from fedmrg.eval.labeler_validation import agreement, format_agreement, iu_validation_set
from fedmrg.labels.labeler import label_matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", choices=["odd", "even"], default="odd")
    parser.add_argument("--archive", default=None, help="NLMCXR_reports.tgz (default: the cached offline copy)")
    args = parser.parse_args()

    reports, _ = read_archive(resolve_reports_archive(args.archive), progress=False)
    texts = [" ".join(t for t in (r.findings, r.impression) if t) for r in reports]
    started = time.perf_counter()
    label_matrix(texts)
    seconds = time.perf_counter() - started
    print(f"labelled {len(texts)} reports in {seconds:.2f} s ({len(texts) / seconds:.0f} reports/s, one core)")

    texts, references = iu_validation_set(args.reports, args.archive)
    for count_uncertain in (False, True):
        kind = "positive or uncertain" if count_uncertain else "positive"
        print(f"\nagreement with MeSH, {args.reports}-numbered reports (n={len(texts)}), labeler '{kind}' = present")
        print(format_agreement(agreement(texts, references, count_uncertain)))


if __name__ == "__main__":
    main()
