"""The MLCommons hazard categories (S1–S14, as Llama Guard 3 and 4 name them) and the bundles' map to them.

Why: platform teams write policy and reports in the standard taxonomy, and
compare guards on it; a verdict that says ``cybercrime`` and ``S2`` fits
both the bundle's own categories and theirs. Light (no torch): the client,
the sidecar and the services all read it.

The default bundle's categories come from HarmBench's semantic categories.
Where MLCommons has no exact counterpart the nearest is used, and said here:
``harassment`` → S10 (hate: demeaning people), ``misinformation`` → S5
(defamation: false claims that harm), ``illegal`` and ``cybercrime`` → S2
(non-violent crimes, which names hacking and fraud).
"""

from __future__ import annotations

HAZARDS: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}

# Bundle category -> hazard code (the default bundle's categories, and common synonyms).
CATEGORY_HAZARDS: dict[str, str] = {
    "violence": "S1",
    "illegal": "S2",
    "cybercrime": "S2",
    "fraud": "S2",
    "sexual": "S12",
    "misinformation": "S5",
    "chemical_biological": "S9",
    "weapons": "S9",
    "harassment": "S10",
    "hate": "S10",
    "self_harm": "S11",
    "privacy": "S7",
    "copyright": "S8",
}


def hazard_of(category: str) -> str:
    """The MLCommons hazard code of a bundle category ("" when it has none, or when safe)."""
    return CATEGORY_HAZARDS.get(category, "")


def is_hazard(name: str) -> bool:
    """True for a hazard code such as ``S9`` (policies may name rules by it)."""
    return name in HAZARDS


def hazards_of(categories: list[str] | tuple[str, ...]) -> set[str]:
    """The hazard codes a bundle with these categories can produce."""
    return {h for h in (hazard_of(c) for c in categories) if h}
