"""Templated synthetic reports for tests and quick runs (``prepare-data --source synthetic``): MeSH-style
major terms plus FINDINGS text in one of several house styles."""

from __future__ import annotations

import numpy as np

from fedmrg.data.reports import SourceReport

# Each study draws a few findings from a prior, writes them as MeSH-style major terms (so they are
# rendered by the same code as IU X-ray studies) and as FINDINGS text in one of several "house
# styles": the phrasing differs by style, the clinical content does not. The style partition must
# then recover the styles from the text alone, which makes it a testable stand-in for the real
# reports' radiologist templates.

# (MeSH major term, qualifier slots) -> the finding's sentence per style. {sev}/{side}/{zone}
# are filled from the sampled qualifiers.
_FINDINGS = {
    "cardiomegaly": (
        "Cardiomegaly/{sev}",
        (
            "Heart {sev} enlarged.",
            "The cardiac silhouette is {sev} enlarged.",
            "{Sev} cardiomegaly.",
            "The heart is {sev} enlarged in size.",
        ),
    ),
    "effusion": (
        "Pleural Effusion/{side}/{size}",
        (
            "{Size} {side} effusion.",
            "There is a {size} {side} pleural effusion with blunting of the costophrenic angle.",
            "{Size} {side} pleural effusion.",
            "A {size} {side} pleural effusion is present.",
        ),
    ),
    "opacity": (
        "Opacity/lung/{zone}/{side}",
        (
            "Opacity {side} {zone}.",
            "There is focal airspace opacity in the {side} {zone}, which may represent pneumonia.",
            "Focal opacity in the {side} {zone}.",
            "The {side} {zone} demonstrates an airspace opacity.",
        ),
    ),
    "nodule": (
        "Nodule/lung/{zone}/{side}",
        (
            "Nodule {side} {zone}.",
            "There is a rounded nodular density in the {side} {zone}.",
            "{Side} {zone} pulmonary nodule.",
            "A nodule is seen in the {side} {zone}.",
        ),
    ),
    "granuloma": (
        "Calcified Granuloma/lung/{zone}/{side}",
        (
            "Calcified granuloma {side} {zone}.",
            "A calcified granuloma is noted in the {side} {zone}, consistent with prior granulomatous disease.",
            "Calcified granuloma in the {side} {zone}.",
            "There is a calcified granuloma in the {side} {zone}.",
        ),
    ),
    "atelectasis": (
        "Pulmonary Atelectasis/base/{side}",
        (
            "Atelectasis {side} base.",
            "There are linear opacities at the {side} lung base compatible with subsegmental atelectasis.",
            "{Side} basilar atelectasis.",
            "Streaky atelectasis is present at the {side} base.",
        ),
    ),
    "pneumothorax": (
        "Pneumothorax/{side}/{size}",
        (
            "{Size} {side} pneumothorax.",
            "There is a {size} {side} apical pneumothorax.",
            "{Size} {side} pneumothorax is present.",
            "A {size} {side} pneumothorax is seen.",
        ),
    ),
    "emphysema": (
        "Emphysema",
        (
            "Hyperinflated lungs.",
            "The lungs are hyperexpanded with flattening of the diaphragms, consistent with emphysema.",
            "Hyperinflation consistent with emphysema.",
            "The lungs are hyperinflated.",
        ),
    ),
    "edema": (
        "Pulmonary Edema/{sev}",
        (
            "{Sev} interstitial edema.",
            "There is {sev} interstitial pulmonary edema with vascular congestion.",
            "{Sev} pulmonary edema.",
            "The pulmonary vasculature is congested with {sev} edema.",
        ),
    ),
    "device": (
        "Implanted Medical Device",
        (
            "Pacemaker in place.",
            "A left-sided pacemaker is present with leads in the right atrium and right ventricle.",
            "Left chest wall pacemaker with leads in good position.",
            "There is a pacemaker.",
        ),
    ),
    "catheter": (
        "Catheters, Indwelling",
        (
            "Central line in place.",
            "A right-sided central venous catheter terminates in the superior vena cava.",
            "Right central venous catheter tip in the SVC.",
            "A central line is seen.",
        ),
    ),
    "spine": (
        "Thoracic Vertebrae/degenerative/{sev}",
        (
            "Degenerative spine.",
            "There are {sev} degenerative changes of the thoracic spine.",
            "{Sev} degenerative changes in the thoracic spine.",
            "The thoracic spine shows {sev} degenerative change.",
        ),
    ),
    "scoliosis": (
        "Scoliosis",
        (
            "Scoliosis.",
            "There is dextroconvex scoliosis of the thoracic spine.",
            "Thoracic scoliosis.",
            "The spine is scoliotic.",
        ),
    ),
    "fracture": (
        "Fractures, Bone/ribs/{side}",
        (
            "Old {side} rib fracture.",
            "There is a healed fracture deformity of a {side} posterior rib.",
            "Healed {side} rib fracture.",
            "An old {side} rib fracture is seen.",
        ),
    ),
    "aorta": (
        "Aorta/tortuous",
        (
            "Tortuous aorta.",
            "The thoracic aorta is tortuous.",
            "Tortuous thoracic aorta.",
            "The aorta is tortuous.",
        ),
    ),
}
_PRIOR = {  # rough IU X-ray frequencies among abnormal studies
    "cardiomegaly": 12,
    "opacity": 14,
    "granuloma": 10,
    "atelectasis": 10,
    "spine": 9,
    "effusion": 6,
    "nodule": 4,
    "catheter": 4,
    "device": 4,
    "scoliosis": 4,
    "aorta": 5,
    "fracture": 3,
    "emphysema": 4,
    "edema": 3,
    "pneumothorax": 2,
}
# What each style says about an organ system when it is normal; a finding in that system replaces it.
_NORMAL = {
    "heart": (
        (
            "Heart size normal.",
            "The cardiomediastinal silhouette is within normal limits for size and contour.",
            "Normal heart size and mediastinal contours.",
            "The heart is normal in size. The mediastinum is unremarkable.",
        ),
        {"cardiomegaly", "aorta"},
    ),
    "lungs": (
        (
            "Lungs clear.",
            "The lungs are normally inflated without evidence of focal airspace disease.",
            "No focal consolidation.",
            "The lungs are clear.",
        ),
        {"opacity", "atelectasis", "edema", "emphysema", "nodule"},
    ),
    "pleura": (
        (
            "No effusion or pneumothorax.",
            "There is no pleural effusion or pneumothorax.",
            "No pleural effusion. No pneumothorax.",
            "There is no pneumothorax or pleural effusion.",
        ),
        {"effusion", "pneumothorax"},
    ),
    "bones": (
        (
            "Bones intact.",
            "Osseous structures are within normal limits for patient age.",
            "No acute bony abnormality.",
            "The osseous structures are intact.",
        ),
        {"spine", "scoliosis", "fracture"},
    ),
}
N_STYLES = 4
_SIDES = ("right", "left")
_ZONES = ("upper lobe", "lower lobe", "base", "apex")
_SEVERITIES = ("mild", "moderate", "severe")
_SIZES = ("small", "moderate", "large")


def _fill(template: str, slots: dict[str, str]) -> str:
    slots = {**slots, **{k.capitalize(): v.capitalize() for k, v in slots.items()}}
    return template.format(**slots)


def _sample_findings(rng: np.random.Generator) -> list[str]:
    if rng.random() < 0.4:
        return []
    names = list(_PRIOR)
    weights = np.array([_PRIOR[n] for n in names], dtype=float)
    count = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
    return [names[i] for i in rng.choice(len(names), size=count, replace=False, p=weights / weights.sum())]


def synthetic_report(index: int, rng: np.random.Generator) -> tuple[SourceReport, int]:
    """One templated study and its house style."""
    style = int(rng.integers(N_STYLES))
    findings = _sample_findings(rng)
    mesh, sentences = [], []
    for name in findings:
        slots = {
            "side": str(rng.choice(_SIDES)),
            "zone": str(rng.choice(_ZONES)),
            "sev": str(rng.choice(_SEVERITIES)),
            "size": str(rng.choice(_SIZES)),
        }
        term, phrasings = _FINDINGS[name]
        mesh.append(_fill(term, slots))
        sentences.append(_fill(phrasings[style], slots))
    normal = [phrasings[style] for phrasings, systems in _NORMAL.values() if not systems & set(findings)]
    uid = f"SYN{index + 1}"
    n_views = 1 if rng.random() < 0.12 else 2
    report = SourceReport(
        uid=uid,
        findings=" ".join(sentences + normal),
        impression="No acute cardiopulmonary abnormality." if not findings else None,
        mesh_major=mesh or ["normal"],
        image_ids=[f"{uid}_IM-{v + 1}" for v in range(n_views)],
        source_file=f"synthetic/{index + 1}",
    )
    return report, style


def synthetic_reports(n_studies: int, seed: int) -> tuple[list[SourceReport], list[int]]:
    """``n_studies`` templated studies and the house style of each (deterministic for ``seed``)."""
    rng = np.random.default_rng([seed, 0x5EED])
    pairs = [synthetic_report(i, rng) for i in range(n_studies)]
    return [p[0] for p in pairs], [p[1] for p in pairs]
