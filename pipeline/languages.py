"""Which writing system a text is in, and whether a model trained on some languages can read it.

A reranker declares the languages it was trained on (``reranker.languages: [en]``, or ``language:``
in its model card's front matter); a query or a passage written in another script is not shown
to it (the stage keeps the first stage's order there; see
:meth:`pipeline.rerankers.cross_encoder.CrossEncoderReranker.rank`).

Detection is a script test, not a language identifier: it counts the letters of each script
(a Han, kana or Hangul character counts 3, about one Latin word's worth of letters per 1.5
characters) and takes the dominant one. It costs microseconds, needs no model, and is exact on
the collections measured here (``docs/multilingual.md``), but it cannot tell English from French:
a declared ``en`` admits every Latin-script text.

Example:
    >>> detect_script("Is mercury in fish dangerous?"), detect_script("维生素D缺乏有什么症状")
    ('Latn', 'Hani')
    >>> LanguageGuard(["en"]).unreadable("长城是中国古代的军事防御工程")
    'zh'
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path

# Languages a model may declare, by the script they are written in (ISO 639-1 -> ISO 15924).
SCRIPT_OF_LANGUAGE: dict[str, str] = {
    **{code: "Latn" for code in (
        "en", "fr", "de", "es", "pt", "it", "nl", "sv", "da", "no", "fi", "pl", "cs", "sk", "sl", "hr", "ro",
        "hu", "tr", "id", "ms", "vi", "ca", "et", "lv", "lt", "sw", "tl")},
    **{code: "Cyrl" for code in ("ru", "uk", "bg", "sr", "be", "kk", "mk")},
    "zh": "Hani", "ja": "Jpan", "ko": "Hang", "el": "Grek", "ar": "Arab", "fa": "Arab", "ur": "Arab",
    "he": "Hebr", "hi": "Deva", "mr": "Deva", "ne": "Deva", "th": "Thai", "bn": "Beng", "ta": "Taml",
}
SCRIPTS = frozenset(SCRIPT_OF_LANGUAGE.values())
# What a skip note calls a script: the language when one language owns it here.
NAME_OF_SCRIPT = {"Hani": "zh", "Jpan": "ja", "Hang": "ko", "Grek": "el", "Hebr": "he", "Thai": "th"}

_RANGES: tuple[tuple[int, int, str], ...] = (  # (first, last, script), code point ranges
    (0x0041, 0x005A, "Latn"), (0x0061, 0x007A, "Latn"), (0x00C0, 0x024F, "Latn"), (0x1E00, 0x1EFF, "Latn"),
    (0x0370, 0x03FF, "Grek"), (0x0400, 0x052F, "Cyrl"), (0x0590, 0x05FF, "Hebr"), (0x0600, 0x06FF, "Arab"),
    (0x0750, 0x077F, "Arab"), (0x0900, 0x097F, "Deva"), (0x0980, 0x09FF, "Beng"), (0x0B80, 0x0BFF, "Taml"),
    (0x0E00, 0x0E7F, "Thai"), (0x1100, 0x11FF, "Hang"), (0x3040, 0x30FF, "Kana"), (0x3130, 0x318F, "Hang"),
    (0x3400, 0x4DBF, "Hani"), (0x4E00, 0x9FFF, "Hani"), (0xAC00, 0xD7AF, "Hang"), (0xF900, 0xFAFF, "Hani"),
    (0x20000, 0x2FA1F, "Hani"),
)
_WIDE = {"Hani": 3, "Kana": 3, "Hang": 3}  # letters' worth of one character
_JAPANESE_KANA_SHARE = 0.2  # Japanese prose is 30-60% kana; Chinese text quoting a Japanese name is not


@lru_cache(maxsize=4096)
def _script_of_char(char: str) -> str | None:
    code = ord(char)
    for first, last, script in _RANGES:
        if first <= code <= last:
            return script if unicodedata.category(char).startswith("L") or script in _WIDE else None
    return None


def script_counts(text: str) -> dict[str, int]:
    """Weighted letters per script (``Kana`` apart from ``Hani``); digits, punctuation and spaces are ignored."""
    counts: dict[str, int] = {}
    for char in text:
        if char.isascii() and not char.isalpha():
            continue
        script = _script_of_char(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + _WIDE.get(script, 1)
    return counts


def detect_script(text: str) -> str | None:
    """The dominant script of ``text`` (ISO 15924: ``Latn``, ``Hani``, ``Jpan``, ``Hang``, ``Cyrl``, ...).

    Han text with at least 20% kana is Japanese (``Jpan``; Chinese text quoting a Japanese title stays
    ``Hani``); None when the text has no letters (numbers, symbols), which every model is taken to read.
    """
    counts = script_counts(text)
    if not counts:
        return None
    kana = counts.pop("Kana", 0)
    if kana and kana >= _JAPANESE_KANA_SHARE * (kana + counts.get("Hani", 0)):
        counts["Jpan"] = kana + counts.pop("Hani", 0)
    elif kana:
        counts["Hani"] = counts.get("Hani", 0) + kana  # a few katakana names in Chinese text
    return max(counts, key=lambda s: (counts[s], s))


def scripts_of(languages: Iterable[str]) -> frozenset[str]:
    """The scripts of declared languages (a script code such as ``Latn`` stands for itself).

    Raises:
        ValueError: a code that is neither a known language nor a script; the message lists them.
    """
    scripts = set()
    for code in languages:
        if code in SCRIPT_OF_LANGUAGE:
            scripts.add(SCRIPT_OF_LANGUAGE[code])
            if code == "ja":
                scripts.add("Hani")  # Japanese text without kana is all kanji
        elif code in SCRIPTS:
            scripts.add(code)
        else:
            raise ValueError(f"unknown language or script {code!r}; known languages: "
                             f"{', '.join(sorted(SCRIPT_OF_LANGUAGE))}; scripts: {', '.join(sorted(SCRIPTS))}")
    return frozenset(scripts)


def card_languages(folder: str | Path) -> list[str] | None:
    """The ``language:`` list of a model card's YAML front matter (``README.md``), or None when it has none."""
    import yaml

    path = Path(folder) / "README.md"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    if not text.startswith("---"):
        return None
    front, sep, _ = text[3:].partition("\n---")
    if not sep:
        return None
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("language") if isinstance(meta, dict) else None
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value] if isinstance(value, list) else None


def script_name(script: str) -> str:
    """How a note names a script: ``zh`` for ``Hani``, the script code otherwise."""
    return NAME_OF_SCRIPT.get(script, script)


class LanguageGuard:
    """Says which texts a model trained on ``languages`` cannot read."""

    def __init__(self, languages: Sequence[str]) -> None:
        self.languages = list(languages)
        self.scripts = scripts_of(languages)

    def unreadable(self, text: str) -> str | None:
        """The name of ``text``'s script (``zh``, ``Cyrl``, ...) when the model cannot read it, else None."""
        script = detect_script(text)
        if script is None or script in self.scripts:
            return None
        return script_name(script)

    def readable_mask(self, query: str, passages: Sequence[str]) -> tuple[list[bool], dict[str, int]]:
        """Which passages may be scored with ``query``, and how many were skipped per script name.

        An unreadable query skips every passage (counted under ``query <name>``).
        """
        query_script = self.unreadable(query)
        if query_script is not None:
            return [False] * len(passages), ({f"query {query_script}": len(passages)} if passages else {})
        mask, skipped = [], {}
        for text in passages:
            name = self.unreadable(text)
            mask.append(name is None)
            if name is not None:
                skipped[name] = skipped.get(name, 0) + 1
        return mask, skipped
