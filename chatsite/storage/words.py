"""The words of a text as the search index keeps them: folded, split, any script.

Folding happens here, in Python, for both databases: case (`casefold`), accents and other
optional marks (Latin, Greek, Cyrillic diacritics, Hebrew points, Arabic vowel signs), and
compatibility forms (full-width letters, ligatures). SQLite and PostgreSQL then compare
plain tokens, so search behaves the same on both and PostgreSQL needs no `unaccent`
extension (which only a privileged role may create).

Scripts written without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) have no words
to split on: a run of such characters is kept as overlapping pairs ("東京タワー" -> 東京,
京タ, タワ, ワー) plus its last character, so that any part of it can be found without
positions: a query of two or more such characters asks for all its pairs, a query of one
for any pair that starts with it.
"""

import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_TOKEN_CHARS = 64  # longer "words" (base64, hashes) are kept cut to this
MAX_QUERY_TERMS = 16

# Marks removed by folding: they are optional in writing (accents, points, vowel signs).
# Marks that make up letters (Devanagari, Thai, Hangul jamo...) are kept.
OPTIONAL_MARKS = (
    (0x0300, 0x036F),  # combining diacritical marks
    (0x0483, 0x0489),  # Cyrillic
    (0x0591, 0x05C7),  # Hebrew points and accents
    (0x0610, 0x061A),  # Arabic
    (0x064B, 0x065F),  # Arabic vowel signs
    (0x0670, 0x0670),
    (0x1AB0, 0x1AFF),
    (0x1DC0, 0x1DFF),
    (0x20D0, 0x20FF),
    (0xFE20, 0xFE2F),
)
STRIP_MARKS = {code: None for low, high in OPTIONAL_MARKS for code in range(low, high + 1)}

# Scripts written without spaces between words.
UNSPACED = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),
    (0x3400, 0x4DBF),  # CJK
    (0x4E00, 0x9FFF),
    (0xF900, 0xFAFF),
    (0x20000, 0x3FFFF),
)


def _ranges(pairs: Iterable[tuple[int, int]]) -> str:
    return "".join(f"{re.escape(chr(low))}-{re.escape(chr(high))}" for low, high in pairs)


def _mark_ranges() -> list[tuple[int, int]]:
    """Code point ranges of the marks (Unicode category M) of the basic plane."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if unicodedata.category(chr(code))[0] == "M":
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return ranges


@functools.cache
def _patterns() -> tuple[re.Pattern, re.Pattern]:
    """(a word: letters, digits and the marks inside them; a run of unspaced characters)."""
    word = re.compile(f"(?:[^\\W_]|[{_ranges(_mark_ranges())}])+")
    unspaced = re.compile(f"[{_ranges(UNSPACED)}]+")
    return word, unspaced


def fold(text: str) -> str:
    """The text without case, optional marks or compatibility forms."""
    decomposed = unicodedata.normalize("NFKD", text).translate(STRIP_MARKS)
    return unicodedata.normalize("NFKC", decomposed.casefold())


@dataclass(frozen=True)
class Term:
    """One token a query asks for; `prefix`: any indexed token that starts with it."""

    text: str
    prefix: bool


def _pieces(folded: str) -> Iterator[tuple[str, bool]]:
    """(piece, unspaced) for each word of folded text, unspaced runs apart."""
    word, unspaced = _patterns()
    for match in word.finditer(folded):
        token, start = match.group(), 0
        for run in unspaced.finditer(token):
            if run.start() > start:
                yield token[start : run.start()], False
            yield run.group(), True
            start = run.end()
        if start < len(token):
            yield token[start:], False


def _pairs(run: str) -> list[str]:
    """An unspaced run as its overlapping pairs and its last character."""
    return [run[index : index + 2] for index in range(len(run) - 1)] + [run[-1]]


def tokens(text: str) -> Iterator[str]:
    """The tokens a text is indexed under, in order (repeats included)."""
    for piece, unspaced in _pieces(fold(text)):
        if unspaced:
            yield from _pairs(piece)
        else:
            yield piece[:MAX_TOKEN_CHARS]


def query_terms(text: str) -> list[Term]:
    """What a query asks for: every term must be in the chat (at most MAX_QUERY_TERMS).

    A word matches the words it begins (`tomat` finds "tomatoes"), except a single letter
    or digit, which matches only itself; an unspaced run matches wherever it occurs.
    """
    terms: list[Term] = []
    for piece, unspaced in _pieces(fold(text)):
        if not unspaced:
            terms.append(Term(piece[:MAX_TOKEN_CHARS], prefix=len(piece) > 1))
        elif len(piece) == 1:
            terms.append(Term(piece, prefix=True))
        else:
            terms.extend(Term(pair, prefix=False) for pair in _pairs(piece)[:-1])
    unique = list(dict.fromkeys(terms))
    return unique[:MAX_QUERY_TERMS]


def locate(text: str, terms: list[Term]) -> tuple[int, int] | None:
    """(start, length) in `text` of the first place one of the terms occurs, or None.

    A term that is a word must start a word there. The place is found in the folded text,
    then carried back to `text` by folding it character by character up to there.
    """
    flat = fold(text)
    word, _ = _patterns()
    best: tuple[int, int] | None = None
    for term in terms:
        at = flat.find(term.text)
        while at >= 0 and not _starts_word(flat, at, term, word):
            at = flat.find(term.text, at + 1)
        if at >= 0 and (best is None or at < best[0]):
            best = (at, len(term.text))
    if best is None:
        return None
    start = _origin(text, best[0])
    return start, _origin(text[start:], best[1])


def _origin(text: str, folded_at: int) -> int:
    """The index in `text` of the character whose folding reaches `folded_at`."""
    reached = 0
    for index, char in enumerate(text):
        if reached >= folded_at:
            return index
        reached += len(_fold_char(char))
    return len(text)


def _starts_word(flat: str, at: int, term: Term, word: re.Pattern) -> bool:
    """Unspaced pairs match anywhere; a word only where no letter comes before it (and,
    for a whole-word term, none after it)."""
    if _patterns()[1].match(term.text):
        return True
    if at > 0 and word.match(flat[at - 1]):
        return False
    end = at + len(term.text)
    return term.prefix or end >= len(flat) or not word.match(flat[end])


@functools.lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    return fold(char)
