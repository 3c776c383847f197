"""MeSH major terms of a chest X-ray report -> structured radiographic findings
(:func:`parse_mesh_term`, :func:`findings_from_mesh`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedmrg.data.synthetic.findings import DEFAULT_SEVERITY, MILD, SEVERE, Finding

# NLM indexers coded every IU X-ray report with MeSH "major" terms shaped like
# ``Head/qualifier/qualifier/...`` (``Opacity/lung/base/left/mild``, ``Lung/hypoinflation``,
# ``Catheters, Indwelling/right``). :func:`parse_mesh_term` turns one term into the findings the
# renderer (:mod:`fedmrg.data.synthetic.render`) draws: a kind, the patient's side, a lung zone, a
# severity and the raw qualifiers.
#
# How heads are read:
#
# - lesion heads (Opacity, Density, Nodule, Mass, Calcinosis, Cicatrix, ...) are placed by their
#   qualifiers: ``Calcinosis/aorta`` is aortic calcification, ``Calcinosis/lung/hilum/lymph nodes``
#   calcified hilar nodes, ``Opacity/pleura`` pleural thickening, ``Density/ribs`` a bone lesion;
# - body-part heads (Lung, Aorta, Diaphragm, Spine, Thoracic Vertebrae, Heart, ...) take their
#   meaning from qualifiers such as hypoinflation, hyperdistention, tortuous, elevated, flattened,
#   degenerative, enlarged; a body-part head whose qualifiers name no visible sign gives kind
#   ``"other"``;
# - ``normal``, ``No Indexing``, technical-quality terms and unknown heads give no finding.
#
# Kind ``"other"`` is drawn as nothing; it only keeps the study out of the "normal" category. Heads
# mapped to it: Hypovolemia, Abdomen, Ribs (prominent/degenerative), Carina, Thorax without a
# qualifier, and organ qualifiers with no radiographic sign at this scale (e.g. ``Density/mitral
# valve``, ``Cicatrix/breast``).

log = logging.getLogger(__name__)

_NO_FINDING_HEADS = frozenset({"normal", "no indexing", "technical quality of image unsatisfactory"})
_SEVERITY_WORDS = {
    "mild": MILD,
    "minimal": MILD,
    "small": MILD,
    "borderline": MILD,
    "slight": MILD,
    "trace": MILD,
    "moderate": DEFAULT_SEVERITY,
    "severe": SEVERE,
    "large": SEVERE,
    "extensive": SEVERE,
    "marked": SEVERE,
    "massive": SEVERE,
}
_REGION_WORDS = {
    "apex": "apex",
    "upper lobe": "upper",
    "middle lobe": "middle",
    "lower lobe": "lower",
    "base": "base",
    "costophrenic angle": "base",
    "sulcus": "base",
    "pleural sinus": "base",
    "cardiophrenic angle": "base",
    "hilum": "hilum",
    "retrocardiac": "retrocardiac",
    "lingula": "lingula",
    "paratracheal": "paratracheal",
}
_SIDE_WORDS = ("right", "left", "bilateral")
_LOBE_SIDE = {"lingula": "left", "middle": "right"}  # lobes that exist on one side only


@dataclass(frozen=True)
class _Term:
    """A normalised MeSH term: head and qualifiers, lower-case, single-spaced."""

    head: str
    qualifiers: tuple[str, ...]

    def has(self, *words: str) -> bool:
        """Whether any qualifier contains any of ``words`` (substring match)."""
        return any(word in qualifier for qualifier in self.qualifiers for word in words)


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------


def parse_mesh_term(term: str) -> list[Finding]:
    """One MeSH major term -> 0..n findings (``[]`` for normal, unindexed and unknown heads)."""
    parts = [" ".join(part.lower().split()) for part in term.split("/")]
    parsed = _Term(parts[0], tuple(p for p in parts[1:] if p))
    if not parsed.head or parsed.head in _NO_FINDING_HEADS or parsed.head.startswith("technical quality"):
        return []
    rule = _HEAD_RULES.get(parsed.head)
    if rule is None:
        log.debug("MeSH head %r has no radiographic mapping; ignored", parsed.head)
        return []
    return [_finding(kind, parsed, overrides) for kind, overrides in rule(parsed)]


def findings_from_mesh(terms: Iterable[str]) -> list[Finding]:
    """All findings of one report's MeSH major terms, exact duplicates removed, in term order."""
    findings: list[Finding] = []
    for term in terms:
        for finding in parse_mesh_term(term):
            if finding not in findings:
                findings.append(finding)
    return findings


# ------------------------------------------------------------------------------------------------
# Term -> finding
# ------------------------------------------------------------------------------------------------

_Overrides = dict  # optional "side", "region", "severity" (a default used when no word gives one)
_Rule = Callable[[_Term], list[tuple[str, _Overrides]]]


def _finding(kind: str, term: _Term, overrides: _Overrides) -> Finding:
    region = overrides.get("region", _region(term.qualifiers))
    side = overrides.get("side", _side(term.qualifiers)) or _LOBE_SIDE.get(region)
    return Finding(
        kind=kind,
        side=side,
        region=region,
        severity=_severity(term.qualifiers, overrides.get("severity", DEFAULT_SEVERITY)),
        qualifiers=term.qualifiers,
    )


def _side(qualifiers: tuple[str, ...]) -> str | None:
    sides = {q for q in qualifiers if q in _SIDE_WORDS}
    if "bilateral" in sides or {"right", "left"} <= sides:
        return "bilateral"
    return next(iter(sides), None)


def _region(qualifiers: tuple[str, ...]) -> str | None:
    return next((_REGION_WORDS[q] for q in qualifiers if q in _REGION_WORDS), None)


def _severity(qualifiers: tuple[str, ...], default: float) -> float:
    levels = [_SEVERITY_WORDS[q] for q in qualifiers if q in _SEVERITY_WORDS]
    return max(levels) if levels else default


def _kinds(*kinds: str, **overrides) -> _Rule:
    """A rule that ignores the qualifiers: always these kinds."""
    return lambda term: [(kind, dict(overrides)) for kind in kinds]


def _keywords(table: tuple[tuple[tuple[str, ...], str], ...], default: str = "other") -> _Rule:
    """A body-part rule: every kind whose keywords occur in a qualifier, else ``default``."""

    def rule(term: _Term) -> list[tuple[str, _Overrides]]:
        kinds = list(dict.fromkeys(kind for words, kind in table if term.has(*words)))
        return [(kind, {}) for kind in kinds or [default]]

    return rule


# Where a lesion head (opacity, nodule, calcification, ...) lies when it is not in the lung.
_SITE_WORDS = (
    ("lung", ("lung", "pulmonary alveoli")),
    ("nodes", ("lymph nodes",)),
    ("aorta", ("aorta", "blood vessels")),
    ("mediastinum", ("mediastinum", "paratracheal", "supracardiac", "trachea")),
    ("pleura", ("pleura",)),
    ("bone", ("ribs", "clavicle", "sternum", "vertebrae", "spine", "humerus", "shoulder")),
    ("breast", ("breast",)),
    ("heart", ("heart", "valve", "coronary")),
    ("abdomen", ("abdomen",)),
)


def _site(term: _Term) -> str:
    """The first matching site in _SITE_WORDS order; "lung" when none is named."""
    return next((site for site, words in _SITE_WORDS if term.has(*words)), "lung")


def _lesion(lung_kind: str, **by_site: str) -> _Rule:
    """A lesion head: ``lung_kind`` in the lung, ``by_site[site]`` elsewhere (default lung_kind)."""

    def rule(term: _Term) -> list[tuple[str, _Overrides]]:
        site = _site(term)
        kind = by_site.get(site, lung_kind)
        if kind == lung_kind and lung_kind == "opacity" and term.has("interstitial", "reticular"):
            kind = "interstitial_markings"
        return [(kind, {})]

    return rule


def _calcinosis(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("lymph nodes", "hilum", "paratracheal", "mediastinum", "trachea"):
        return [("calcified_lymph_nodes", {})]
    by_site = {
        "aorta": "aortic_calcification",
        "pleura": "pleural_thickening",
        "bone": "sclerotic_bone_lesion",
        "abdomen": "abdominal_calcification",
        "heart": "other",
        "breast": "breast_implant",
    }
    return [(by_site.get(_site(term), "calcified_granuloma"), {})]


def _fracture(term: _Term) -> list[tuple[str, _Overrides]]:
    return [("vertebral_fracture" if term.has("vertebrae", "spine") else "fracture", {})]


def _deformity(term: _Term) -> list[tuple[str, _Overrides]]:
    """A deformed vertebra, rib or clavicle; a deformed hilum or apex is scarring (retraction)."""
    by_site = {
        "bone": "fracture",
        "pleura": "pleural_thickening",
        "mediastinum": "mediastinal_shift",
        "lung": "scarring",
    }
    if term.has("vertebrae", "spine"):
        return [("vertebral_deformity", {})]
    if term.has("shoulder"):
        return [("shoulder_degenerative", {})]
    if term.has("sternum"):
        return [("other", {})]
    site = _site(term)
    named = site != "lung" or term.has("lung")
    return [(by_site.get(site, "other") if named else "other", {})]


def _pneumonectomy(term: _Term) -> list[tuple[str, _Overrides]]:
    """A named lobe means a lobectomy: volume loss and hilar clips, not an empty hemithorax."""
    if _region(term.qualifiers) in ("upper", "middle", "lower", "apex", "base"):
        return [("volume_loss", {}), ("surgical_clips", {"region": "hilum"})]
    return [("pneumonectomy", {})]


def _heart(term: _Term) -> list[tuple[str, _Overrides]]:
    """``Heart/left/obscured`` is the silhouette sign of lingula / middle lobe disease."""
    if term.has("obscured"):
        side = _side(term.qualifiers) or "left"
        return [("opacity", {"side": side, "region": "lingula" if side == "left" else "middle"})]
    if term.has("enlarged", "prominent", "hypertroph", "dilat"):
        return [("cardiomegaly", {})]
    return [("other", {})]


def _implanted_device(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("valve"):
        return [("prosthetic_valve", {})]
    if term.has("humerus", "shoulder"):
        return [("orthopedic_hardware", {})]
    if term.has("vertebrae", "spine"):
        return [("spinal_fusion", {})]
    if term.has("pulmonary artery"):
        return [("stent", {})]
    if term.has("abdomen"):
        return [("foreign_body", {})]
    return [("pacemaker", {})]


def _medical_device(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("breast"):
        return [("breast_implant", {})]
    if term.has("spine", "vertebrae"):
        return [("spinal_fusion", {})]
    return [("ecg_leads", {})]


def _sutures(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("sternum", "mediastinum"):
        return [("sternotomy_wires", {})]
    return [("surgical_clips", {})]


def _surgical_instruments(term: _Term) -> list[tuple[str, _Overrides]]:
    """Sternotomy wires and mediastinal clips are both coded ``Surgical Instruments/mediastinum``."""
    if term.has("mediastinum", "sternum"):
        return [("sternotomy_wires", {}), ("surgical_clips", {})]
    return [("surgical_clips", {})]


def _lucency(term: _Term) -> list[tuple[str, _Overrides]]:
    site = _site(term)
    if site == "bone":
        return [("lytic_bone_lesion", {})]
    if site == "mediastinum":
        return [("pneumomediastinum", {})]
    if term.has("diaphragm"):
        return [("subdiaphragmatic_air", {})]
    if site == "heart" or term.has("retrocardiac"):
        return [("hiatal_hernia", {})]
    return [("bulla", {})]


def _hyperlucent(term: _Term) -> list[tuple[str, _Overrides]]:
    """Diffuse hyperlucency is hyperinflation; a zone or a single side is a localized lucency."""
    if _region(term.qualifiers) or _side(term.qualifiers) in ("right", "left"):
        return [("bulla", {})]
    return [("hyperinflation", {})]


def _arthritis(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("shoulder", "humerus", "clavicle"):
        return [("shoulder_degenerative", {})]
    return [("spine_degenerative", {})]


def _dislocation(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("vertebrae", "spine"):
        return [("vertebral_deformity", {})]
    return [("shoulder_dislocation", {})]


def _tuberculosis(term: _Term) -> list[tuple[str, _Overrides]]:
    region = _region(term.qualifiers) or "upper"
    return [("scarring" if term.has("healed", "chronic") else "opacity", {"region": region})]


def _cysts(term: _Term) -> list[tuple[str, _Overrides]]:
    return [("lytic_bone_lesion" if _site(term) == "bone" else "bulla", {})]


def _pleura(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("blunted", "obscured", "effusion"):
        return [("pleural_effusion", dict(_BLUNTED))]
    return [("pleural_thickening", {})]


def _adipose(term: _Term) -> list[tuple[str, _Overrides]]:
    if term.has("mediastinum"):
        return [("mediastinal_widening", {})]
    if term.has("pleura"):
        return [("pleural_thickening", {})]
    return [("epicardial_fat", {})]


_BLUNTED = {"severity": MILD}  # a blunted angle is a small effusion unless a word says otherwise

_LUNG_WORDS = (
    (("hypoinflation",), "hypoinflation"),
    (("hyperdistention", "hyperinflation", "hyperlucen"), "hyperinflation"),
    (("azygos",), "azygos_fissure"),
    (("interstitial",), "interstitial_markings"),
    (("hilum",), "hilar_adenopathy"),
    (("blood vessels",), "edema"),
    (("obscured",), "opacity"),
)
_SPINE_WORDS = (
    (("degenerative", "osteophyte", "spondylosis", "arthrit", "hyperostosis"), "spine_degenerative"),
    (("scolio", "curv"), "scoliosis"),
    (("kyphos", "kyphotic"), "kyphosis"),
    (("deform", "wedg", "compress", "collapse"), "vertebral_deformity"),
    (("fusion", "fused"), "spinal_fusion"),
    (("demineral", "osteopen"), "osteopenia"),
)
_AORTA_WORDS = (
    (("tortuous", "ectatic", "dilat", "enlarged", "aneurysm", "unfolded", "prominent", "widen"), "tortuous_aorta"),
    (("calcif", "atheroscl"), "aortic_calcification"),
)
_DIAPHRAGM_WORDS = (
    (("elevat", "eventration", "raised"), "elevated_hemidiaphragm"),
    (("flatten",), "hyperinflation"),
    (("obscured",), "opacity"),
)
_MEDIASTINUM_WORDS = (
    (("shift", "deviat"), "mediastinal_shift"),
    (("emphysema", "air"), "pneumomediastinum"),
    (("prominent", "enlarged", "widen", "lymph nodes"), "mediastinal_widening"),
)
_BONE_WORDS = (
    (("degenerative", "arthrit", "osteophyte"), "spine_degenerative"),
    (("fracture", "deform"), "fracture"),
    (("demineral", "osteopen"), "osteopenia"),
)
_SHOULDER_WORDS = ((("degenerative", "arthrit", "osteophyte", "prominent"), "shoulder_degenerative"),)
_THICKENING_WORDS = (
    (("pleura",), "pleural_thickening"),
    (("bronch", "interstitial"), "interstitial_markings"),
    (("paratracheal", "mediastinum"), "mediastinal_widening"),
)

# "Opacity" and "Density" are coded alike: where they sit decides what is drawn.
_OPACITY_OR_DENSITY = _lesion(
    "opacity",
    mediastinum="mediastinal_widening",
    pleura="pleural_thickening",
    bone="sclerotic_bone_lesion",
    breast="nipple_shadow",
    heart="other",
    nodes="hilar_adenopathy",
)

_HEAD_RULES: dict[str, _Rule] = {
    # lung parenchyma
    "opacity": _OPACITY_OR_DENSITY,
    "density": _OPACITY_OR_DENSITY,
    "infiltrate": _lesion("opacity"),
    "airspace disease": _lesion("opacity"),
    "consolidation": _kinds("consolidation"),
    "pneumonia": _kinds("consolidation"),
    "pulmonary atelectasis": _kinds("atelectasis"),
    "volume loss": _kinds("volume_loss"),
    "thorax": _keywords(((("small",), "volume_loss"),)),
    "nodule": _lesion("nodule", pleura="pleural_thickening", bone="sclerotic_bone_lesion", breast="nipple_shadow"),
    "mass": _lesion("mass", mediastinum="mediastinal_widening", nodes="hilar_adenopathy"),
    "calcified granuloma": _lesion(
        "calcified_granuloma", mediastinum="calcified_lymph_nodes", nodes="calcified_lymph_nodes"
    ),
    "granuloma": _lesion("calcified_granuloma"),
    "granulomatous disease": _kinds("granulomatous_disease"),
    "calcinosis": _calcinosis,
    "cicatrix": _lesion("scarring", pleura="pleural_thickening", breast="other", bone="other"),
    "cavitation": _kinds("cavity"),
    "blister": _kinds("bulla"),
    "cysts": _cysts,
    "lucency": _lucency,
    "lung, hyperlucent": _hyperlucent,
    "emphysema": _kinds("hyperinflation"),
    "pulmonary emphysema": _kinds("hyperinflation"),
    "pulmonary disease, chronic obstructive": _kinds("hyperinflation"),
    "bullous emphysema": _kinds("hyperinflation", "bulla"),
    "cystic fibrosis": _kinds("hyperinflation", "bronchiectasis"),
    "pulmonary edema": _kinds("edema"),
    "pulmonary congestion": _kinds("edema", severity=0.45),
    "heart failure": _kinds("edema", "cardiomegaly"),
    "blood vessels": _keywords(((("calcif",), "aortic_calcification"), (("prominent", "engorged"), "edema"))),
    "markings": _kinds("interstitial_markings"),
    "lung diseases, interstitial": _kinds("interstitial_markings"),
    "bronchitis": _kinds("interstitial_markings"),
    "bronchiolitis": _kinds("interstitial_markings"),
    "pulmonary fibrosis": _kinds("fibrosis"),
    "fibrosis": _kinds("fibrosis"),
    "bronchiectasis": _kinds("bronchiectasis"),
    "tuberculosis": _tuberculosis,
    "sarcoidosis": _kinds("hilar_adenopathy", side="bilateral"),
    "lung": _keywords(_LUNG_WORDS),
    "hypovolemia": _kinds("other"),
    # pleura
    "pleural effusion": _kinds("pleural_effusion"),
    "hemothorax": _kinds("pleural_effusion"),
    "costophrenic angle": _kinds("pleural_effusion", **_BLUNTED),
    "sulcus": _kinds("pleural_effusion", **_BLUNTED),
    "pleura": _pleura,
    "thickening": _keywords(_THICKENING_WORDS, default="pleural_thickening"),
    "pneumothorax": _kinds("pneumothorax"),
    "hydropneumothorax": _kinds("pneumothorax", "pleural_effusion"),
    "hemopneumothorax": _kinds("pneumothorax", "pleural_effusion"),
    "pneumonectomy": _pneumonectomy,
    # heart, mediastinum, great vessels
    "cardiomegaly": _kinds("cardiomegaly"),
    "cardiac shadow": _keywords(((("enlarged", "prominent", "borderline"), "cardiomegaly"),)),
    "heart": _heart,
    "heart atria": _kinds("cardiomegaly"),
    "heart ventricles": _kinds("cardiomegaly"),
    "pericardial effusion": _kinds("pericardial_effusion"),
    "epicardial fat": _kinds("epicardial_fat"),
    "adipose tissue": _adipose,
    "mediastinum": _keywords(_MEDIASTINUM_WORDS),
    "shift": _kinds("mediastinal_shift"),
    "trachea": _kinds("mediastinal_shift"),
    "mediastinal emphysema": _kinds("pneumomediastinum"),
    "lymph nodes": _keywords(((("calcif",), "calcified_lymph_nodes"),), default="hilar_adenopathy"),
    "trachea, carina": _keywords(((("lymph nodes",), "hilar_adenopathy"),)),
    "pulmonary artery": _kinds("pulmonary_artery_enlargement"),
    "hypertension, pulmonary": _kinds("pulmonary_artery_enlargement"),
    "aorta": _keywords(_AORTA_WORDS),
    "aorta, thoracic": _keywords(_AORTA_WORDS),
    "aortic aneurysm": _kinds("tortuous_aorta", severity=SEVERE),
    "atherosclerosis": _kinds("aortic_calcification"),
    "hernia, hiatal": _kinds("hiatal_hernia"),
    "hernia, diaphragmatic": _kinds("hiatal_hernia"),
    # diaphragm and abdomen
    "diaphragm": _keywords(_DIAPHRAGM_WORDS),
    "diaphragmatic eventration": _kinds("elevated_hemidiaphragm"),
    "pneumoperitoneum": _kinds("subdiaphragmatic_air"),
    "colonic interposition": _kinds("subdiaphragmatic_air", side="right"),
    "cholelithiasis": _kinds("abdominal_calcification", side="right"),
    "contrast media": _kinds("contrast_media"),
    "abdomen": _kinds("other"),
    # chest wall and soft tissue
    "subcutaneous emphysema": _kinds("subcutaneous_emphysema"),
    "mastectomy": _kinds("mastectomy"),
    "nipple shadow": _kinds("nipple_shadow"),
    "funnel chest": _kinds("pectus_excavatum"),
    "pectus carinatum": _kinds("pectus_carinatum"),
    "breast implants": _kinds("breast_implant"),
    # bones and joints
    "thoracic vertebrae": _keywords(_SPINE_WORDS),
    "cervical vertebrae": _keywords(_SPINE_WORDS),
    "lumbar vertebrae": _keywords(_SPINE_WORDS),
    "spine": _keywords(_SPINE_WORDS),
    "osteophyte": _arthritis,
    "spondylosis": _kinds("spine_degenerative"),
    "hyperostosis, diffuse idiopathic skeletal": _kinds("spine_degenerative", severity=SEVERE),
    "arthritis": _arthritis,
    "scoliosis": _kinds("scoliosis"),
    "kyphosis": _kinds("kyphosis"),
    "deformity": _deformity,
    "fractures, bone": _fracture,
    "dislocations": _dislocation,
    "bone diseases, metabolic": _kinds("osteopenia"),
    "osteoporosis": _kinds("osteopenia"),
    "sclerosis": lambda term: [("pleural_thickening" if term.has("pleura") else "sclerotic_bone_lesion", {})],
    "expansile bone lesions": _kinds("lytic_bone_lesion"),
    "bone and bones": _keywords(_BONE_WORDS),
    "ribs": _keywords(_BONE_WORDS),
    "shoulder": _keywords(_SHOULDER_WORDS),
    "humerus": _keywords(_SHOULDER_WORDS),
    # devices
    "catheters, indwelling": _kinds("central_catheter"),
    "implanted medical device": _implanted_device,
    "medical device": _medical_device,
    "surgical instruments": _surgical_instruments,
    "sutures": _sutures,
    "tube, inserted": _kinds("tube"),
    "stents": _kinds("stent"),
    "spinal fusion": _kinds("spinal_fusion"),
    "foreign bodies": _kinds("foreign_body"),
}
