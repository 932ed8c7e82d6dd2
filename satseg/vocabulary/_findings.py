"""Findings on an organ ("renal mass", "hepatic metastases", "focal lesion of the pancreas") → lesion terms.

The lesion terms of an organ are SAT's lesion classes (its ``abnormal`` list, and their sided variants) named
``<organ> <type>``: "kidney tumor", "kidney cyst", "lung nodule", "colon cancer", "myocardial scar", "brain
edema", "head and neck tumor". The rule:

1. a phrase that is a lesion term or its synonym is that term ("brain tumour", "stroke lesion", "COVID-19
   lesions" → covid-19 infection; "tumour lesions" on PET → tumor);
2. finding words are typed: tumour (tumour, neoplasm, cancer, carcinoma, malignancy, primary, metastasis),
   cyst, nodule, haemorrhage, oedema, scar, effusion; general (lesion, mass, abnormality);
3. organ + typed word → the organ's lesion terms of that type;
4. organ + general word (lesion, mass, abnormality, finding, focus) → **the union of the organ's lesion-type terms
   trained for the scan's modality**: tumour, nodule, cyst, haemorrhage and scar types; an effusion (fluid in a
   space) is never a lesion ("lung lesions" = lung nodule + lung tumor). Where the organ also has an oedema term
   (whether oedema counts is the clinician's call: "myocardial lesions"), or other lesion terms lie in the organ
   without its name (:data:`LESIONS_INSIDE`: the brain's stroke, white matter hyperintensities, intracranial
   haemorrhage), the prompt is refused with all of them as options — never a partial set. The word
   before the finding must name an organ: a qualifier that is only part of a lesion term's name ("intracranial
   lesion", "nasopharyngeal mass") is refused;
4a. a typed finding word must agree with the lesion term it is put on ("hemorrhagic stroke", "stroke edema",
   "covid nodules" are refused), and two different types in one phrase ("lung tumor cyst") are refused;
4b. metastases named with their primary ("metastases from lung cancer", "colon cancer metastases") are refused:
   metastases lie elsewhere, and no term segments them by their primary;
5. no such term → refusal (the modality check refuses a term trained only on another modality, or warns with
   ``allow_untrained_modality``); a sided organ ("left renal mass") is refused when the unsided organ has lesion
   types no sided term covers; no organ → refusal with the lesion terms as suggestions.
"""

from __future__ import annotations

from satseg.vocabulary._match import Match, Refusal
from satseg.vocabulary._text import LATERALITY, phrase_key, tokens

# Last word of a lesion term → its type.
LESION_TYPES = {"tumor": "tumor", "cancer": "tumor", "nodule": "nodule", "cyst": "cyst", "hemorrhage": "hemorrhage",
                "edema": "edema", "scar": "scar", "effusion": "effusion"}

FINDING_WORDS = {
    "lesion": "any", "mass": "any", "abnormality": "any", "finding": "any", "focus": "any",
    "tumor": "tumor", "neoplasm": "tumor", "cancer": "tumor", "carcinoma": "tumor", "adenocarcinoma": "tumor",
    "malignancy": "tumor", "malignant": "tumor", "primary": "tumor", "metastasis": "tumor", "met": "tumor",
    "metastatic": "tumor", "neoplastic": "tumor", "tumoral": "tumor",
    "nodule": "nodule", "nodular": "nodule", "cyst": "cyst", "cystic": "cyst",
    "hemorrhage": "hemorrhage", "bleed": "hemorrhage", "bleeding": "hemorrhage", "hematoma": "hemorrhage",
    "hemorrhagic": "hemorrhage", "edema": "edema", "edematous": "edema", "scar": "scar", "scarring": "scar",
    "fibrosis": "scar", "infarction": "scar", "effusion": "effusion",
}
# Lesion types a general finding word asks for (no oedema, no effusion: they are no lesions).
GENERAL_TYPES = frozenset({"tumor", "nodule", "cyst", "hemorrhage", "scar"})
# Lesion terms without a lesion-type word in their name, by type (None: a disease, no single type).
TERM_TYPES = {"vestibular schwannoma": "tumor", "stroke": None, "covid-19 infection": None,
              "pulmonary embolism": None, "white matter hyperintensities": None}
# Lesion terms that lie in an organ without its name: a general word on the organ must not leave them out.
LESIONS_INSIDE = {"brain": ("stroke", "white matter hyperintensities", "intracranial hemorrhage")}
METASTASIS_WORDS = frozenset({"metastasis", "metastatic", "met"})

MODIFIERS = frozenset({"focal", "solitary", "multiple", "suspicious", "known", "space", "occupying", "solid",
                       "disease", "deposit", "burden", "any", "possible", "suspected", "cell", "squamous", "clear",
                       "ductal", "acute", "subacute", "chronic", "peritumoral", "perilesional", "vasogenic",
                       "hypermetabolic", "hypodense", "hyperdense", "hypoattenuating", "hyperattenuating",
                       "hyperintense", "hypointense", "avid", "fdg", "active", "metabolically"})
LINKS = frozenset({"of", "in", "on", "within", "involving", "at", "from", "affecting", "arising", "to", "the"})


def wanted_types(finding_words: list[str]) -> tuple[set[str], str]:
    """Lesion types a set of finding words asks for, and the rule's wording for --explain."""
    types = {FINDING_WORDS[w] for w in finding_words}
    specific = types - {"any"}
    if not specific:
        return set(GENERAL_TYPES), ("a general finding word (lesion, mass, abnormality) means the union of all "
                                    "lesion terms trained (tumor, nodule, cyst, hemorrhage, scar; never an "
                                    "effusion; refused where an edema term could also be meant)")
    return specific, f"{' '.join(finding_words)!r} means the {'/'.join(sorted(specific))}-type lesion terms trained"


def term_type(name: str, key_words: list[str]) -> str | None:
    """The lesion type of a lesion term: from :data:`TERM_TYPES`, else a type word in its name."""
    if name in TERM_TYPES:
        return TERM_TYPES[name]
    return next((LESION_TYPES[w] for w in reversed(key_words) if w in LESION_TYPES), None)


class FindingReader:
    """A finding on an organ read by the rule above. Mixed into :class:`satseg.vocabulary._phrases.Resolver`,
    which supplies ``vocabulary``, ``modality``, ``phrase`` and ``key``."""

    _lesions: dict | None = None

    def lesions(self) -> dict[str, list[tuple[str, str]]]:
        """Organ (term name, or the name's key where no term) → [(lesion term, type)], from the term names."""
        if self._lesions is None:
            v = self.vocabulary
            index: dict[str, list[tuple[str, str]]] = {}
            for name, entry in v.terms.items():
                words = phrase_key(name).split()
                if len(words) < 2 or words[-1] not in LESION_TYPES:
                    continue
                unsided = v.term_by_key.get(" ".join(words[1:]))
                if not (entry.abnormal or words[0] in LATERALITY and unsided and v.terms[unsided].abnormal):
                    continue
                organ_key = " ".join(words[:-1])
                organ = self.key(organ_key, depth=1)
                owner = organ.terms[0] if isinstance(organ, Match) and len(organ.terms) == 1 else organ_key
                index.setdefault(owner, []).append((name, LESION_TYPES[words[-1]]))
            self._lesions = index
        return self._lesions

    def _finding(self, text: str, key: str) -> Match | Refusal | None:
        words = tokens(text)
        found = [w for w in words if w in FINDING_WORDS]
        if not found:
            return None
        rest = [w for w in words if w not in FINDING_WORDS and w not in MODIFIERS
                and w not in ("both", "bilateral")]  # "nodules in both lungs": the organ's lesion terms
        while rest and rest[0] in LINKS:
            rest.pop(0)
        while rest and rest[-1] in LINKS:
            rest.pop()
        on_modality = f" on {self.modality.upper()}" if self.modality else ""
        typed = {FINDING_WORDS[w] for w in found} - {"any"}
        if METASTASIS_WORDS & set(found) and (
                "from" in words or {w for w in found if w not in METASTASIS_WORDS and
                                    FINDING_WORDS[w] == "tumor"}):
            return Refusal(f"{text!r} names metastases with their primary tumour: metastases lie elsewhere and no "
                           f"term segments them by their primary; name the organ they are in ('liver metastases')",
                           self._lesion_terms()[:5])
        if len(typed) > 1:
            return Refusal(f"{text!r} names two kinds of finding ({', '.join(sorted(typed))}); write each as its "
                           f"own prompt", self._lesion_terms()[:5])
        for named in [rest] if rest else [[w] for w in found]:  # "stroke lesion", "COVID-19 lesions", "tumour
            lesion = self._lesion_term(named)                     # lesions": a lesion term with a finding word
            if lesion is not None:
                kinds = {term_type(t, phrase_key(t).split()) for t in lesion.terms}
                if typed and kinds != typed:  # "hemorrhagic stroke", "covid nodules": the word contradicts it
                    return Refusal(f"{text!r}: {' '.join(found)!r} does not fit {', '.join(lesion.terms)!r}; "
                                   f"write the lesion term alone", tuple(lesion.terms))
                return Match(lesion.terms, lesion.method, f"{' '.join(found)!r} on a lesion term: {lesion.how}")
        if not rest:
            options = self._lesion_terms()
            return Refusal(f"{text!r} names a finding but no organ; lesion terms trained{on_modality}: "
                            f"{', '.join(options)}", options[:5])
        organ, owner = self._organ(rest)
        if owner is None:
            return None
        types, rule = wanted_types(found)
        lesions = self.lesions().get(owner, [])
        side, _, unsided = owner.partition(" ")
        if not lesions and side in LATERALITY and unsided in self.lesions():
            options = tuple(t for t, _ in self.lesions()[unsided])
            return Refusal(f"{text!r}: the lesion terms of the {unsided} are not sided; choose among "
                           f"{', '.join(options)}", options)
        if not lesions:
            return Refusal(f"no lesion term is trained for {owner!r} (asked for by {text!r})",
                            tuple(dict.fromkeys([*self._lesion_terms(), owner]))[:5])
        if side in LATERALITY and unsided in self.lesions():
            missing = {k for _, k in self.lesions()[unsided]} - {k for _, k in lesions}
            if missing & types:
                options = tuple(t for t, _ in lesions + self.lesions()[unsided])
                return Refusal(f"{text!r}: the {'/'.join(sorted(missing & types))} lesion terms of the {unsided} "
                                f"are not sided; choose among {', '.join(options)}", options)
        chosen = [t for t, k in lesions if k in types]
        general = not typed
        if general and owner not in self.vocabulary.terms:  # "intracranial lesion": a name part, not an organ
            options = tuple(t for t, _ in lesions)
            return Refusal(f"{text!r}: {' '.join(rest)!r} is no organ; name the lesion term "
                           f"({', '.join(options)})", options)
        on = [t for t in LESIONS_INSIDE.get(owner, ()) if t in self.vocabulary.terms] + [
            t for t, k in lesions if k == "edema"]  # oedema: a lesion or not is the clinician's call
        inside = [t for t in on if self.modality is None or self.modality in self.vocabulary.modalities_of(t)]
        if general and inside:
            trained = [t for t in chosen if self.modality is None or self.modality in self.vocabulary.modalities_of(t)]
            options = tuple(dict.fromkeys(trained + inside))
            return Refusal(f"{text!r} could be any of the {owner}'s lesion terms{on_modality}: "
                           f"{', '.join(options)}; name the ones you mean", options)
        if not chosen:
            options = tuple(t for t, _ in lesions)
            return Refusal(f"no {'/'.join(sorted(types))} lesion term is trained for {owner!r}; its lesion terms: "
                            f"{', '.join(options)}", options)
        trained = [t for t in chosen if self.modality in self.vocabulary.modalities_of(t)]
        chosen = trained or chosen
        how = f"finding {' '.join(found)!r} on {owner!r}{organ}; rule: {rule} for the {owner}{on_modality}"
        return Match(tuple(chosen), "finding", how)

    def _lesion_term(self, words: list[str]) -> Match | None:
        """A lesion term named by the words ("ischemic stroke", "covid 19", "tumor"), else None."""
        found = self.phrase(" ".join(words))
        if isinstance(found, Match) and all(self.vocabulary.terms[t].abnormal for t in found.terms):
            return found
        return None

    def _organ(self, words: list[str]) -> tuple[str, str | None]:
        text = " ".join(words)
        found = self.phrase(text)
        if isinstance(found, Match) and len(found.terms) == 1:
            how = "" if found.terms[0] == text else f" ({found.how})"
            return how, found.terms[0]
        key = phrase_key(text)
        if key in self.lesions():
            return "", key
        substituted = " ".join(self.vocabulary.adjectives.get(w, w) for w in key.split())
        if substituted in self.lesions():
            return f" (word form {key!r} → {substituted!r})", substituted
        return "", None

    def _lesion_terms(self) -> tuple[str, ...]:
        names = [t for items in self.lesions().values() for t, _ in items]
        names += [n for n, e in self.vocabulary.terms.items() if e.abnormal and n in FINDING_WORDS]
        on = [t for t in names if self.modality in self.vocabulary.modalities_of(t)]
        return tuple(sorted(on or names))

