"""MeSH terms -> findings -> synthetic radiographs (fedmrg.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from fedmrg.data.synthetic import (
    CATEGORIES,
    FINDING_KINDS,
    KIND_CATEGORY,
    Finding,
    finding_categories,
    findings_from_mesh,
    parse_mesh_term,
    region_box,
    render_study,
    sample_anatomy,
)

SIZE = 256
SEED = 1234


def finding(
    kind: str,
    side: str | None = None,
    region: str | None = None,
    severity: float = 0.6,
    qualifiers: tuple[str, ...] = (),
) -> Finding:
    return Finding(kind, side, region, severity, qualifiers)


def anatomy(seed: int = SEED):
    return sample_anatomy(np.random.default_rng(seed))


def box_mean(image: np.ndarray, box: tuple[slice, slice]) -> float:
    return float(image[box].mean())


@pytest.fixture(scope="module")
def normal() -> list[np.ndarray]:
    return render_study([], seed=SEED)


# ------------------------------------------------------------------------------------------------
# MeSH parsing
# ------------------------------------------------------------------------------------------------


def test_parse_lesion_with_lung_zone_side_and_severity():
    assert parse_mesh_term("Opacity/lung/base/left/mild") == [
        Finding("opacity", "left", "base", 0.3, ("lung", "base", "left", "mild"))
    ]


@pytest.mark.parametrize(
    "term, kind",
    [
        ("  cardiomegaly/MILD ", "cardiomegaly"),
        ("Catheters, Indwelling/right", "central_catheter"),
        ("Subcutaneous  Emphysema/neck", "subcutaneous_emphysema"),
        ("Thoracic vertebrae/degenerative/mild", "spine_degenerative"),
        ("Calcinosis/lung/hilum/lymph nodes", "calcified_lymph_nodes"),
        ("Calcinosis/aorta", "aortic_calcification"),
        ("Calcified Granuloma/lung/upper lobe/right", "calcified_granuloma"),
        ("Lung/hypoinflation/bilateral", "hypoinflation"),
        ("Lung/hyperdistention", "hyperinflation"),
        ("Aorta/tortuous", "tortuous_aorta"),
        ("Diaphragm/elevated/right", "elevated_hemidiaphragm"),
        ("Diaphragm/bilateral/flattened", "hyperinflation"),
        ("Markings/lung/bilateral/interstitial/prominent", "interstitial_markings"),
        ("Fractures, Bone/ribs/left/healed", "fracture"),
        ("Fractures, Bone/thoracic vertebrae", "vertebral_fracture"),
        ("Deformity/thoracic vertebrae", "vertebral_deformity"),
        ("Density/retrocardiac", "opacity"),
        ("Implanted Medical Device/left", "pacemaker"),
        ("Surgical Instruments/abdomen/right", "surgical_clips"),
        ("Tube, Inserted/trachea, carina", "tube"),
        ("Pneumonia/lower lobe/right", "consolidation"),
        ("Pulmonary Disease, Chronic Obstructive", "hyperinflation"),
    ],
)
def test_parse_real_term_shapes(term, kind):
    assert [f.kind for f in parse_mesh_term(term)] == [kind]


def test_body_part_heads_take_meaning_from_qualifiers():
    (density,) = parse_mesh_term("Density/retrocardiac")
    assert density.region == "retrocardiac"
    (nodes,) = parse_mesh_term("Calcinosis/lung/hilum/lymph nodes/right")
    assert (nodes.side, nodes.region) == ("right", "hilum")
    (blunting,) = parse_mesh_term("Costophrenic Angle/left/blunted")
    assert (blunting.kind, blunting.side) == ("pleural_effusion", "left") and blunting.severity <= 0.3
    assert {f.kind for f in parse_mesh_term("Heart Failure")} == {"edema", "cardiomegaly"}
    assert {f.kind for f in parse_mesh_term("Hydropneumothorax/right")} == {"pneumothorax", "pleural_effusion"}
    assert parse_mesh_term("Opacity/lung/lingula")[0].side == "left"  # the lingula is on the left only


@pytest.mark.parametrize(
    "term",
    [
        "normal",
        "No Indexing",
        "Technical Quality of Image Unsatisfactory ",
        "NORMAL",
        "Unknown Head/left/severe",
        "",
        "/",
    ],
)
def test_terms_without_a_finding(term):
    assert parse_mesh_term(term) == []


@pytest.mark.parametrize(
    "qualifier, severity",
    [
        ("mild", 0.3),
        ("borderline", 0.3),
        ("small", 0.3),
        ("minimal", 0.3),
        ("moderate", 0.6),
        ("severe", 0.9),
        ("large", 0.9),
        (None, 0.6),
    ],
)
def test_severity_words(qualifier, severity):
    term = "Pleural Effusion/right" + (f"/{qualifier}" if qualifier else "")
    assert parse_mesh_term(term)[0].severity == pytest.approx(severity)


def test_sides():
    terms = (
        "Opacity/lung/right",
        "Opacity/lung/left",
        "Opacity/lung/bilateral",
        "Opacity/lung/right/left",
        "Opacity/lung",
    )
    sides = [parse_mesh_term(t)[0].side for t in terms]
    assert sides == ["right", "left", "bilateral", "bilateral", None]


def test_every_corpus_head_parses_without_error():
    heads = [
        "normal",
        "Lung",
        "Opacity",
        "Cardiomegaly",
        "Calcinosis",
        "Pulmonary Atelectasis",
        "Calcified Granuloma",
        "Thoracic Vertebrae",
        "Cicatrix",
        "Spine",
        "Pleural Effusion",
        "Markings",
        "Aorta",
        "Diaphragm",
        "Airspace Disease",
        "Atherosclerosis",
        "Density",
        "Catheters, Indwelling",
        "Deformity",
        "Scoliosis",
        "Nodule",
        "Implanted Medical Device",
        "Granulomatous Disease",
        "Surgical Instruments",
        "No Indexing",
        "Aorta, Thoracic",
        "Fractures, Bone",
        "Technical Quality of Image Unsatisfactory ",
        "Costophrenic Angle",
        "Pulmonary Congestion",
        "Osteophyte",
        "Infiltrate",
        "Spondylosis",
        "Emphysema",
        "Cardiac Shadow",
        "Thickening",
        "Granuloma",
        "Pulmonary Disease, Chronic Obstructive",
        "Hernia, Hiatal",
        "Pulmonary Edema",
        "Pneumonia",
        "Pulmonary Emphysema",
        "Kyphosis",
        "Foreign Bodies",
        "Arthritis",
        "Diaphragmatic Eventration",
        "Consolidation",
        "Tube, Inserted",
        "Bone Diseases, Metabolic",
        "Mediastinum",
        "Spinal Fusion",
        "Lucency",
        "Medical Device",
        "Pneumothorax",
        "Pulmonary Fibrosis",
        "Stents",
        "Mass",
        "Lung, Hyperlucent",
        "Epicardial Fat",
        "Shoulder",
        "Lung Diseases, Interstitial",
        "Pulmonary Artery",
        "Lumbar Vertebrae",
        "Heart Failure",
        "Sclerosis",
        "Heart",
        "Volume Loss",
        "Shift",
        "Hypertension, Pulmonary",
        "Pericardial Effusion",
        "Sutures",
        "Nipple Shadow",
        "Cavitation",
        "Pneumonectomy",
        "Blister",
        "Mastectomy",
        "Sulcus",
        "Bronchiectasis",
        "Hyperostosis, Diffuse Idiopathic Skeletal",
        "Breast Implants",
        "Cysts",
        "Dislocations",
        "Subcutaneous Emphysema",
        "Cystic Fibrosis",
        "Heart Atria",
        "Contrast Media",
        "Pneumoperitoneum",
        "Funnel Chest",
        "Adipose Tissue",
        "Hydropneumothorax",
        "Aortic Aneurysm",
        "Bullous Emphysema",
        "Ribs",
        "Heart Ventricles",
        "Pectus Carinatum",
        "Bone and Bones",
        "Pleura",
        "Sarcoidosis",
        "Cervical Vertebrae",
        "Hernia, Diaphragmatic",
        "Lymph Nodes",
        "Humerus",
        "Abdomen",
        "Osteoporosis",
        "Tuberculosis",
        "Thorax",
        "Hemothorax",
        "Blood Vessels",
        "Fibrosis",
        "Expansile Bone Lesions",
        "Cholelithiasis",
        "Lymph nodes",
        "Bronchitis",
        "Trachea",
        "Colonic Interposition",
        "Bronchiolitis",
        "Hemopneumothorax",
        "Subcutaneous  Emphysema",
        "Mediastinal Emphysema",
        "Thoracic vertebrae",
        "Hypovolemia",
        "Trachea, Carina",
    ]
    unmapped = [h for h in heads if not parse_mesh_term(h)]
    assert unmapped == ["normal", "No Indexing", "Technical Quality of Image Unsatisfactory "]
    for head in heads:
        for term in (f"{head}/right/mild", f"{head}/lung/upper lobe/multiple", f"{head}/thoracic vertebrae"):
            assert all(f.kind in FINDING_KINDS for f in parse_mesh_term(term))


def test_findings_from_mesh_removes_exact_duplicates_only():
    findings = findings_from_mesh(["Cardiomegaly", "cardiomegaly ", "Cardiomegaly/mild", "normal"])
    assert [(f.kind, f.severity) for f in findings] == [("cardiomegaly", 0.6), ("cardiomegaly", 0.3)]


def test_categories():
    assert CATEGORIES[0] == "normal" and len(set(CATEGORIES)) == len(CATEGORIES)
    assert set(KIND_CATEGORY) == set(FINDING_KINDS)
    assert set(KIND_CATEGORY.values()) <= set(CATEGORIES) - {"normal"}
    assert finding_categories([]) == ["normal"]
    assert finding_categories(findings_from_mesh(["Pleural Effusion/left", "Cardiomegaly", "Hypovolemia"])) == [
        "cardiomegaly",
        "effusion",
        "other",
    ]


def test_every_category_is_reachable_from_real_terms():
    terms = {
        "cardiomegaly": "Cardiomegaly/mild",
        "effusion": "Pleural Effusion/right/small",
        "opacity": "Airspace Disease/lung/base/left",
        "atelectasis": "Pulmonary Atelectasis/base/bilateral",
        "nodule": "Nodule/lung/upper lobe/right",
        "hyperinflation": "Emphysema",
        "edema": "Pulmonary Edema",
        "pneumothorax": "Pneumothorax/apex/right/small",
        "device": "Catheters, Indwelling/right",
        "fracture": "Fractures, Bone/ribs/left/healed",
        "spine": "Scoliosis/thoracic vertebrae",
        "aorta": "Aorta/tortuous",
        "scarring": "Cicatrix/lung/apex/bilateral",
        "other": "Hernia, Hiatal",
    }
    reached = {"normal": finding_categories(findings_from_mesh(["normal"]))}
    reached.update({category: finding_categories(parse_mesh_term(term)) for category, term in terms.items()})
    assert reached == {c: [c] for c in CATEGORIES}


# ------------------------------------------------------------------------------------------------
# Rendering: contract
# ------------------------------------------------------------------------------------------------


def test_views_shape_dtype_range(normal):
    assert len(normal) == 2
    for view in normal:
        assert view.shape == (SIZE, SIZE) and view.dtype == np.float32
        assert view.min() >= 0.0 and view.max() <= 1.0
    small = render_study([finding("pneumothorax", "left")], seed=3, size=96, n_views=2)
    assert [v.shape for v in small] == [(96, 96), (96, 96)]


def test_single_view_is_the_frontal(normal):
    (frontal,) = render_study([], seed=SEED, n_views=1)
    assert np.array_equal(frontal, normal[0])
    with pytest.raises(ValueError):
        render_study([], seed=SEED, n_views=3)


def test_rendering_is_deterministic():
    findings = [finding("opacity", "left", "lower"), finding("pacemaker"), finding("calcified_granuloma")]
    first, second = render_study(findings, seed=7), render_study(findings, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    reordered = render_study(findings[::-1], seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, reordered))


def test_different_seeds_give_different_patients(normal):
    assert anatomy(1) != anatomy(2)
    other = render_study([], seed=SEED + 1)
    assert np.abs(other[0] - normal[0]).mean() > 0.01
    assert np.abs(other[1] - normal[1]).mean() > 0.01


def test_normal_study_looks_like_a_chest(normal):
    frontal = normal[0]
    anat = anatomy()
    lungs = [box_mean(frontal, region_box(anat, side, "upper", SIZE)) for side in ("right", "left")]
    mid_column = frontal[region_box(anat, None, "middle", SIZE)[0], SIZE // 2 - 3 : SIZE // 2 + 3].mean()
    assert max(lungs) < 0.4 < mid_column  # dark lungs, bright mediastinum / spine
    assert frontal[-8:, :6].mean() < 0.08 and frontal[-8:, -6:].mean() < 0.08  # air outside the body
    assert frontal[-20:, SIZE // 2 - 20 : SIZE // 2 + 20].mean() > 0.5  # abdomen below the diaphragm
    assert frontal.max() < 0.9 and normal[1].max() < 0.9  # no metal in a normal study


def test_region_box_follows_the_patients_side():
    anat = anatomy()
    right_rows, right_cols = region_box(anat, "right", "base", SIZE)
    left_rows, left_cols = region_box(anat, "left", "base", SIZE)
    assert right_cols.stop <= SIZE // 2 + 10 < left_cols.stop  # the patient's right is on the image left
    assert right_cols.start < left_cols.start
    apex_rows, _ = region_box(anat, "right", "apex", SIZE)
    assert apex_rows.stop < right_rows.start
    both_rows, both_cols = region_box(anat, "bilateral", "base", SIZE)
    assert both_cols.start == right_cols.start and both_cols.stop == left_cols.stop


# ------------------------------------------------------------------------------------------------
# Rendering: findings change the right pixels
# ------------------------------------------------------------------------------------------------


def test_right_effusion_fills_the_image_left_base_only(normal):
    anat = anatomy()
    views = render_study([finding("pleural_effusion", "right")], seed=SEED)
    diff = views[0] - normal[0]
    right_base = region_box(anat, "right", "base", SIZE)
    assert diff[right_base].mean() > 0.02 and diff[right_base].max() > 0.25  # right base = image left, whiter
    assert np.abs(diff[region_box(anat, "left", None, SIZE)]).max() < 1e-6  # the other lung is untouched
    assert np.abs(diff[region_box(anat, "right", "apex", SIZE)]).max() < 1e-6  # and so is the apex
    assert (views[1] - normal[1]).max() > 0.1  # the lateral view shows the fluid too


def test_left_upper_lobe_opacity_raises_intensity_there(normal):
    anat = anatomy()
    views = render_study([finding("opacity", "left", "upper")], seed=SEED)
    upper = region_box(anat, "left", "upper", SIZE)
    assert box_mean(views[0], upper) - box_mean(normal[0], upper) > 0.01
    assert np.abs(views[0] - normal[0])[region_box(anat, "right", None, SIZE)].max() < 1e-6


def _heart_width(image: np.ndarray, anat) -> int:
    """Widest run of bright (heart / mediastinum) pixels through the image centre, above the domes."""
    rows = range(region_box(anat, None, "middle", SIZE)[0].start, region_box(anat, None, "base", SIZE)[0].start)
    centre, widest = SIZE // 2, 0
    for row in rows:
        bright = image[row] > 0.5
        if not bright[centre]:
            continue
        lo, hi = centre, centre
        while lo > 0 and bright[lo - 1]:
            lo -= 1
        while hi < SIZE - 1 and bright[hi + 1]:
            hi += 1
        widest = max(widest, hi - lo + 1)
    return widest


@pytest.mark.parametrize("seed", [SEED, 5, 11])
def test_cardiomegaly_widens_the_heart_silhouette(seed):
    anat = anatomy(seed)
    thorax = region_box(anat, None, None, SIZE)[1]
    thorax_width = thorax.stop - thorax.start
    ctr = {}
    for sev in (0, 0.3, 0.9):
        frontal = render_study([finding("cardiomegaly", severity=sev)] if sev else [], seed=seed)[0]
        ctr[sev] = _heart_width(frontal, anat) / thorax_width
    assert 0.35 < ctr[0] < 0.52  # normal cardiothoracic ratio
    assert ctr[0.3] > 0.55 and ctr[0.9] > ctr[0.3] + 0.05


def test_pneumothorax_darkens_the_apex_on_its_side(normal):
    anat = anatomy()
    views = render_study([finding("pneumothorax", "left")], seed=SEED)
    apex = region_box(anat, "left", "apex", SIZE)
    assert box_mean(views[0], apex) < box_mean(normal[0], apex) - 0.005
    assert np.abs(views[0] - normal[0])[region_box(anat, "right", None, SIZE)].max() < 1e-6


def test_hyperinflation_darkens_lungs_and_lowers_the_diaphragm(normal):
    anat = anatomy()
    views = render_study([finding("hyperinflation", severity=0.9)], seed=SEED)
    lungs = region_box(anat, "bilateral", "middle", SIZE)
    assert box_mean(views[0], lungs) < box_mean(normal[0], lungs) - 0.01

    def diaphragm_row(image: np.ndarray) -> int:
        _, cols = region_box(anat, "right", None, SIZE)
        column = image[:, (cols.start + cols.stop) // 2 - 2 : (cols.start + cols.stop) // 2 + 3].mean(axis=1)
        start = region_box(anat, "right", "middle", SIZE)[0].start
        return start + int(np.argmax(column[start:] > 0.55))

    assert diaphragm_row(views[0]) > diaphragm_row(normal[0]) + 5


@pytest.mark.parametrize("kind", ["pacemaker", "central_catheter", "sternotomy_wires", "spinal_fusion"])
def test_devices_add_metal_bright_pixels(normal, kind):
    views = render_study([finding(kind)], seed=SEED)
    assert (views[0] > 0.9).sum() > 20 and (views[1] > 0.9).sum() > 5  # a normal study has none


@pytest.mark.parametrize(
    "kind, side",
    [
        ("pleural_effusion", "left"),
        ("opacity", "right"),
        ("pneumothorax", "right"),
        ("cardiomegaly", None),
        ("edema", None),
    ],
)
def test_severe_changes_more_than_mild(normal, kind, side):
    change = {
        sev: np.abs(render_study([finding(kind, side, severity=sev)], seed=SEED)[0] - normal[0]).sum()
        for sev in (0.3, 0.9)
    }
    assert change[0.9] > 1.2 * change[0.3]


def test_adding_a_finding_keeps_the_anatomy_and_the_other_findings(normal):
    anat = anatomy()
    nodule = finding("nodule", "left", "upper")
    alone = render_study([nodule], seed=SEED)
    both = render_study([nodule, finding("pleural_effusion", "right")], seed=SEED)
    assert np.array_equal(alone[0][region_box(anat, "left", None, SIZE)], both[0][region_box(anat, "left", None, SIZE)])
    changed = np.abs(alone[0] - normal[0]) > 1e-6
    assert 0 < changed.mean() < 0.02  # a nodule is a local change


@pytest.mark.parametrize("kind", FINDING_KINDS)
def test_every_kind_renders_and_all_but_other_are_visible(normal, kind):
    views = render_study([finding(kind, severity=0.9)], seed=SEED)
    for view in views:
        assert view.shape == (SIZE, SIZE) and np.isfinite(view).all() and view.min() >= 0 and view.max() <= 1
    change = max(float(np.abs(v - n).max()) for v, n in zip(views, normal))
    if kind == "other":
        assert change == 0.0
    else:
        assert change > 0.03, f"{kind} is not visible"
