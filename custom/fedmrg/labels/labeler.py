"""An offline, rule-based CheXpert-style labeler for chest X-ray reports.

For each of the 14 CheXpert observations a report gets 1 (positive), 0 (negative), -1 (uncertain)
or None (not mentioned). How:

1. The text is lower-cased and cut into sentences, and sentences into clauses at words that end a
   negation's or a hedge's reach ("but", "however", "although", "which", "except", ...).
2. Mentions are found with regular expressions per observation (stems, so that one phrase catches
   its variants: ``atelecta`` for atelectasis/atelectatic); a mention is dropped when its context
   shows another organ (a *pericardial* effusion is not a pleural effusion; a *bony* lesion is not
   a lung lesion). A few phrases carry their status themselves ("normal heart size" is a negative
   cardiomegaly mention, "borderline cardiomegaly" an uncertain one).
3. Each mention's status, in this order:
   - uncertain if a hedge that contains a negation word applies ("cannot be excluded", "not ruled
     out", "difficult to exclude");
   - negative if a negation trigger ("no", "without", "free of", "negative for", "resolved", ...)
     precedes it in its clause and its scope reaches it — through coordinated lists ("no focal
     consolidation, pleural effusion or pneumothorax") but not past a comma that starts a new
     statement ("no effusion, small pneumothorax") — or a post-negation follows it ("is not seen",
     "has resolved"); pseudo-negations ("no change in the calcified nodule", "no interval change")
     are not triggers;
   - uncertain if a hedge ("may", "possible", "suggestive of", "versus", "likely", ...) precedes it
     in its clause or follows it ("X is suspected", "X is possible");
   - positive otherwise.
4. Per report: positive over uncertain over negative (CheXpert's aggregation); "No Finding" is
   positive only when no other observation, Support Devices aside, is positive or uncertain, and
   is otherwise not mentioned.

The lists are ours, written from radiology usage and calibrated only on the odd-numbered IU X-ray
reports against NLM's MeSH coding (see ``fedmrg.eval.labeler_validation``).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from fedmrg.labels.observations import NEGATIVE, OBSERVATIONS, POSITIVE, UNCERTAIN

Label = int | None


def _rx(*alternatives: str) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(alternatives) + r")", re.IGNORECASE)


@dataclass(frozen=True)
class _Rule:
    """Mentions of one observation; ``status`` fixes the status of phrases that carry their own."""

    observation: str
    pattern: re.Pattern
    exclude: re.Pattern | None = None  # context (around the match) in which it is not this observation
    status: int | None = None


_NORMAL = r"(?:normal|within normal limits|within (?:the )?limits of normal|unremarkable|not enlarged|stable|unchanged)"
_ADVERB = r"(?:\w+ly\s+)?"
_BE = r"(?:\s+(?:is|are|appears?|remains?|seems?|looks?))?"

_RULES: tuple[_Rule, ...] = (
    # --- heart and mediastinum -------------------------------------------------------------
    _Rule(
        "Cardiomegaly",
        _rx(
            r"cardiomegaly",
            r"(?:cardiac|heart) enlargement",
            r"enlarge\w* (?:of )?(?:the )?(?:heart|cardiac)",
            r"(?:enlarged|large|prominent|increased) (?:heart|cardiac (?:silhouette|shadow|size)|heart size)",
            rf"(?:heart|cardiac (?:silhouette|shadow|size)|heart size){_BE}(?: size)? {_ADVERB}(?:enlarged|increased|large|prominent)",
            r"(?:heart|cardiac) size (?:is )?(?:mildly |moderately |markedly )?(?:increased|enlarged)",
        ),
    ),
    _Rule(
        "Cardiomegaly",
        _rx(
            r"borderline (?:cardiomegaly|enlarge\w*|heart size|cardiac)",
            r"(?:heart|cardiac) size[^.;]{0,30}?(?:upper limits? (?:of )?normal|borderline|top normal|top-normal)",
            r"(?:heart|cardiac silhouette)(?: size)?(?: is| appears)? (?:\w+ )?(?:borderline|top normal|top-normal)",
            r"(?:top normal|top-normal|upper normal) (?:heart|cardiac) size",
        ),
        status=UNCERTAIN,
    ),
    _Rule(
        "Cardiomegaly",
        _rx(
            rf"(?:heart|cardiac (?:silhouette|size|shadow)|heart size)(?: and [\w ]{{1,40}}?)?{_BE}(?: \w+){{0,2}} {_NORMAL}",
            rf"(?:cardiomediastinal|cardiac and mediastinal) (?:silhouette|contours?|size)[^.;]{{0,30}}?{_NORMAL}",
            r"normal (?:heart|cardiac|cardiomediastinal)(?: and mediastinal)? (?:size|silhouette|contours?|shadow)",
            r"normal (?:heart|cardiac) size",
            r"heart is normal",
            r"normal-sized heart",
            r"no cardiomegaly",
        ),
        status=NEGATIVE,
    ),
    _Rule(
        "Enlarged Cardiomediastinum",
        _rx(
            r"(?:widened|widening of the|wide|enlarged|prominent) (?:cardio)?mediastin\w*",
            rf"(?:cardio)?mediastin\w*(?: (?:silhouette|contours?|width))?{_BE} {_ADVERB}(?:widened|enlarged|prominent|wide)",
            r"mediastinal (?:widening|enlargement|prominence|adenopathy|lymphadenopathy)",
            r"prominence of the (?:\w+ )?mediastin\w*",
        ),
    ),
    _Rule(
        "Enlarged Cardiomediastinum",
        _rx(
            rf"(?:cardio)?mediastin\w*(?: (?:silhouette|contours?|size|width))?(?: and [\w ]{{1,40}}?)?{_BE}(?: \w+){{0,2}} {_NORMAL}",
            r"normal (?:cardio)?mediastinal (?:silhouette|contours?|size|width)",
            r"normal (?:heart|cardiac) and mediastinal",
            r"mediastinum is normal",
        ),
        status=NEGATIVE,
    ),
    # --- lungs -----------------------------------------------------------------------------
    _Rule(
        "Lung Lesion",
        _rx(
            r"nodul\w*",
            r"mass(?:es)?\b",
            r"lesions?\b",
            r"tumou?r",
            r"neoplas\w*",
            r"carcinoma",
            r"malignan\w*",
            r"metasta\w*",
            r"cavitary",
            r"cavitation",
        ),
        exclude=re.compile(
            r"mass effect|soft tissue mass|breast|thyroid|(?:bony|bone|osseous|lytic|sclerotic|blastic|skin|rib|vertebral|"
            r"spinal|liver|hepatic|renal|adrenal) (?:lesion|mass|nodul)|(?:lesion|mass)\w* (?:of|in) the (?:bone|rib|spine)|"
            r"nipple|granuloma|(?:mediastinal|pericardial|pleural|chest wall) mass",
            re.IGNORECASE,
        ),
    ),
    _Rule(
        "Lung Opacity",
        _rx(
            r"opaci\w*",
            r"infiltrat\w*",
            r"air[- ]?space (?:disease|process|opaci\w*)",
            r"densit(?:y|ies)",
            r"haz(?:y|iness)",
            r"interstitial (?:marking|prominence|opaci|pattern|disease|lung disease|changes?|thickening)\w*",
            r"reticula\w*",
            r"scar(?:ring|s)?\b",
            r"fibros\w*",
            r"fibrotic",
        ),
        exclude=re.compile(
            r"(?:bone|bony|osseous|breast|soft tissue|nipple|calcified|granuloma\w*) (?:densit|opaci)|"
            r"(?:nodular|round|rounded) (?:opaci|densit)|pleural (?:scar|fibros)|pleural[- ]parenchymal|"
            r"densit\w* of the (?:bone|spine)|mineralization|osteopenia",
            re.IGNORECASE,
        ),
    ),
    _Rule(
        "Edema",
        _rx(
            r"edema",
            r"oedema",
            r"(?:vascular|venous|pulmonary) congestion",
            r"congestive heart failure",
            r"\bchf\b",
            r"heart failure",
            r"kerley",
            r"cephalization",
            r"congestion",
            r"vascular (?:prominence|redistribution|engorgement|"
            r"indistinct\w*|congestion)",
            r"prominen\w* (?:of the )?(?:central )?(?:pulmonary )?vascula\w*",
            r"(?:pulmonary )?vascula(?:r|ture|rity)(?: markings)?(?: is| are| appears?)? (?:\w+ly )?(?:prominent|engorged|indistinct)",
        ),
        exclude=re.compile(r"soft tissue edema|subcutaneous edema|(?:arm|extremit|chest wall) edema", re.IGNORECASE),
    ),
    _Rule("Consolidation", _rx(r"consolidat\w*")),
    _Rule(
        "Pneumonia",
        _rx(r"pneumoni\w*", r"infection", r"infectious", r"bronchopneumonia"),
        exclude=re.compile(
            r"granulomatous|(?:old|prior|previous|remote|healed|chronic) (?:\w+ )?infect|sequela", re.IGNORECASE
        ),
    ),
    _Rule(
        "Atelectasis",
        _rx(r"atelecta\w*", r"collapse[sd]?\b", r"volume loss"),
        exclude=re.compile(
            r"vertebra\w* (?:body )?collapse|compression|collapse of (?:the )?(?:t|l)\d|"
            r"(?:vertebral|spine|spinal) (?:body )?height",
            re.IGNORECASE,
        ),
    ),
    _Rule("Pneumothorax", _rx(r"pneumothora\w*", r"pneumothoraces", r"hydropneumothora\w*")),
    # --- pleura ----------------------------------------------------------------------------
    _Rule(
        "Pleural Effusion",
        _rx(
            r"effusions?\b",
            r"pleural fluid",
            r"hydrothorax",
            r"hemothorax",
            r"hydropneumothora\w*",
            r"fluid (?:in|within) the (?:pleural|fissure)",
        ),
        exclude=re.compile(r"pericardial|joint|knee|shoulder|subpulmonic pericard", re.IGNORECASE),
    ),
    _Rule("Pleural Effusion", _rx(r"blunt\w*"), status=UNCERTAIN, exclude=re.compile(r"effusion", re.IGNORECASE)),
    _Rule(
        "Pleural Other",
        _rx(
            r"pleural (?:thickening|plaque|calcification|scar\w*|reaction|fibrosis)",
            r"pleural[- ]parenchymal scar\w*",
            r"pleuroparenchymal",
            r"fibrothorax",
            r"apical (?:pleural )?(?:cap|capping|thickening)",
            r"fissur\w* thickening",
            r"thickening (?:of|in|along) the (?:\w+ )?(?:fissure|pleura)",
        ),
    ),
    # --- bones and devices -------------------------------------------------------------------
    _Rule("Fracture", _rx(r"fracture\w*", r"\bfx\b")),
    _Rule(
        "Support Devices",
        _rx(
            r"pacemaker",
            r"pacer",
            r"pacing (?:leads?|wires?|device)",
            r"aicd",
            r"\bicd\b",
            r"defibrillator",
            r"(?:cardiac|transvenous) leads?",
            r"catheters?",
            r"picc",
            r"central (?:venous )?line",
            r"(?:venous|port|dialysis|"
            r"subclavian|jugular|swan-ganz|swan ganz) (?:line|catheter)",
            r"port-?a-?cath",
            r"porta?cath",
            r"power ?port",
            r"(?:chest|central|infusion|venous) port",
            r"(?:endotracheal|tracheostomy|nasogastric|orogastric|feeding|enteric|chest|"
            r"gastric|et|ng|og) tubes?",
            r"tracheostomy",
            r"stents?\b",
            r"drains?\b",
            r"(?:medical|support|cardiac) devices?",
            r"loop recorder",
            r"(?:valve|valvular) (?:replacement|prosthes\w*)",
            r"prosthetic valve",
            r"generator",
            r"stimulator",
            r"occluder",
            r"(?:ekg|ecg|monitor\w*|telemetry) (?:leads?|wires?)",
            r"hardware",
            r"arthroplast\w*",
            r"tip (?:is )?(?:in|at|over|projecting over|overlying|terminat\w* (?:in|at|over)) (?:the )?(?:\w+ ){0,2}"
            r"(?:svc|superior vena cava|cavoatrial|caval|right atrium|atrial)",
        ),
    ),
)

# Negation triggers that precede a mention. "no" is not a trigger in pseudo-negations such as
# "no change in ...", "no interval increase".
_PSEUDO = r"(?!\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+|definite\s+)*(?:change|increase|decrease|interval|progression|worsening|enlargement))"
_PRE_NEGATION = re.compile(
    r"\b(?:no" + _PSEUDO + r"|not" + _PSEUDO + r"|without" + _PSEUDO + r"|free of|negative for|absence of|absent|"
    r"resolution of|resolved|removal of|removed|clear of|neither|nor|ruled out|excluded)\b",
    re.IGNORECASE,
)
_POST_NEGATION_PHRASE = (
    r"\b(?:(?:is|are|was|were|has been|have been)\s+)?(?:not (?:seen|identified|present|visualized|"
    r"demonstrated|evident|noted|appreciated|detected|visible|apparent|enlarged)|absent|(?:has |have )?resolved|"
    r"no longer (?:seen|present|visible|identified|evident|visualized)|(?:has |have )?(?:been )?removed|cleared|"
    # a subject (or a coordinated one: "heart size and vascularity") said to be normal
    r"(?:appears?|is|are|remains?|seems?)\s+(?:\w+\s+)?(?:within (?:normal limits|(?:the )?limits of normal)|"
    r"normal|unremarkable))\b"
)
_POST_NEGATION = re.compile(r"^[^,]{0,40}?" + _POST_NEGATION_PHRASE, re.IGNORECASE)
# Hedges that contain a negation word: checked before negation.
_NEGATED_HEDGE = re.compile(
    r"(?:cannot|can not|can't|could not|not) (?:be )?(?:entirely |completely |totally |definitely )?(?:excluded|exclude|"
    r"ruled out|rule out)|difficult to (?:exclude|rule out)|(?:to )?rule out|r/o|not (?:well )?(?:be )?(?:excluded)",
    re.IGNORECASE,
)
_PRE_HEDGE = re.compile(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|likely|questionabl[ey]|question(?: of)?|suspicious|suspect\w*|"
    r"suggest\w*|concerning for|concern for|worrisome for|cannot exclude|differential|versus|vs|equivocal|"
    r"indeterminate|uncertain|unclear|presum\w*|perhaps|maybe|borderline|atypical|favor\w*|evaluate for|"
    r"consider\w*|represent\w*|vague\w*|ill-defined|poorly defined|either|correlat\w*)\b",
    re.IGNORECASE,
)
_POST_HEDGE = re.compile(
    r"^[^,]{0,30}?\b(?:is |are |was |were )?(?:(?:also )?(?:possible|suspected|questioned|likely|probable|"
    r"not excluded|in the differential)|versus|vs|or (?:\w+ ){0,2}(?:atelecta|pneumoni|consolidat|infect|scar|effusion|edema|mass|"
    r"nodul|infiltrat|fibros|opaci))\b",
    re.IGNORECASE,
)
# Where a clause ends: a negation or hedge does not reach past these.
_CLAUSE_END = re.compile(
    r"\b(?:but|however|although|though|whereas|except|aside from|apart from|otherwise|which|that may|"
    r"with the exception of)\b",
    re.IGNORECASE,
)
# After a comma, a new statement rather than the next item of a negated list.
_NEW_STATEMENT = re.compile(
    r",\s*(?:and\s+)?(?:(?:there|the|this|these|it|a|an|persistent|stable|unchanged|increas\w*|decreas\w*|improv\w*|"
    r"worsen\w*|again|healed|old|status post|s/p)\b|[a-z]+ (?:is|are|was|were|has|have)\b)",
    re.IGNORECASE,
)
_WORDS_IN_SCOPE = 14
# A question mark ends a sentence but stays with it: a finding asked about is uncertain.
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|[;!\n]|(?<=\?)")


_DEIDENTIFIED = re.compile(r"\bx{2,}\b", re.IGNORECASE)  # IU X-ray's "XXXX" stands for a removed word


def _sentences(text: str) -> list[str]:
    text = " ".join(_DEIDENTIFIED.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _clause_bounds(sentence: str, start: int, end: int) -> tuple[int, int]:
    """The clause of the sentence that holds the span [start, end)."""
    left, right = 0, len(sentence)
    for match in _CLAUSE_END.finditer(sentence):
        if match.end() <= start:
            left = match.end()
        elif match.start() >= end:
            right = match.start()
            break
    return left, right


def _reaches(trigger: re.Pattern, before: str) -> bool:
    """Does the last ``trigger`` in ``before`` reach its end (same statement, within a few words)?"""
    triggers = list(trigger.finditer(before))
    if not triggers:
        return False
    scope = before[triggers[-1].end() :]
    return not _NEW_STATEMENT.search(scope) and len(scope.split()) <= _WORDS_IN_SCOPE


def _mention_status(sentence: str, start: int, end: int) -> int:
    left, right = _clause_bounds(sentence, start, end)
    before, mention, after = sentence[left:start], sentence[start:end], sentence[end:right]
    near = sentence[max(left, start - 60) : min(right, end + 60)]
    if _NEGATED_HEDGE.search(near):
        return UNCERTAIN
    if re.search(r"\b(?:no|not)\b", mention) or _reaches(_PRE_NEGATION, before) or _POST_NEGATION.search(after):
        return NEGATIVE
    if _reaches(_PRE_HEDGE, before) or _POST_HEDGE.search(after) or sentence.endswith("?"):
        return UNCERTAIN
    return POSITIVE


def _excluded(rule: _Rule, sentence: str, start: int, end: int) -> bool:
    return rule.exclude is not None and bool(rule.exclude.search(sentence[max(0, start - 30) : end + 30]))


def _stronger(a: Label, b: Label) -> Label:
    """CheXpert's aggregation: positive over uncertain over negative over not mentioned."""
    order = {None: 0, NEGATIVE: 1, UNCERTAIN: 2, POSITIVE: 3}
    return a if order[a] >= order[b] else b


def _fixed_status(rule: _Rule, sentence: str, start: int, end: int) -> int:
    """Status of a self-describing phrase: a hedge still makes it uncertain, a negation of a hedge too."""
    if rule.status == NEGATIVE:
        return NEGATIVE
    status = _mention_status(sentence, start, end)
    return NEGATIVE if status == NEGATIVE else rule.status


def label_report(text: str) -> dict[str, Label]:
    """Label one report: observation -> 1 (positive), 0 (negative), -1 (uncertain) or None."""
    labels: dict[str, Label] = {name: None for name in OBSERVATIONS}
    for sentence in _sentences(text):
        # Spans of self-describing phrases, with their status, win over plain mentions inside them; a
        # mention inside a phrase that says "normal" ("heart size and vascular engorgement appear
        # within normal limits") is negative with it.
        claimed: list[tuple[int, int, int]] = []
        for rule in sorted(_RULES, key=lambda r: r.status is None):
            for match in rule.pattern.finditer(sentence):
                start, end = match.span()
                if _excluded(rule, sentence, start, end):
                    continue
                inside = [fixed for s, e, fixed in claimed if s < end and start < e]
                if rule.status is None and inside:
                    if NEGATIVE not in inside:
                        continue
                    status = NEGATIVE
                elif rule.status is not None:
                    status = _fixed_status(rule, sentence, start, end)
                    claimed.append((start, end, status))
                else:
                    status = _mention_status(sentence, start, end)
                labels[rule.observation] = _stronger(labels[rule.observation], status)
    findings = [v for k, v in labels.items() if k not in ("No Finding", "Support Devices")]
    labels["No Finding"] = None if any(v in (POSITIVE, UNCERTAIN) for v in findings) else POSITIVE
    return labels


def label_reports(texts: Iterable[str]) -> list[dict[str, Label]]:
    return [label_report(t) for t in texts]


def label_matrix(texts: Sequence[str]) -> np.ndarray:
    """float32 [N, 14] in OBSERVATIONS order; NaN where an observation is not mentioned."""
    matrix = np.full((len(texts), len(OBSERVATIONS)), np.nan, dtype=np.float32)
    for i, text in enumerate(texts):
        for j, value in enumerate(label_report(text).values()):
            if value is not None:
                matrix[i, j] = value
    return matrix
