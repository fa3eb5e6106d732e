"""Obfuscated spellings of words, as people write them to get past word filters.

``obfuscate(text, rng, targets)`` rewrites words the way abusive comments do: a masked
letter (``C*CK``, ``f**k``), leetspeak (``sh1t``, ``@ss``), letters spaced out (``i d i o t``),
repeated letters (``stuuupid``). Words in ``targets`` (a lexicon of obscene/insulting words)
are rewritten with probability ``target_rate``; any other word with ``noise_rate``, so that
the classifier sees leetspeak and stretched letters in harmless text too and learns the word
behind the disguise rather than "an asterisk means abuse".

Training text only: the held-out sets are obfuscated with another seed (and the bench
reports that subset apart), so a model is never scored on the exact variants it saw.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Collection, Sequence

_LEET = {"a": "@4", "e": "3", "i": "1!", "o": "0", "s": "$5", "t": "7", "l": "1", "g": "9"}
STYLES = ("mask", "leet", "spaced", "repeat")


def obfuscate_word(word: str, style: str, rng: random.Random) -> str:
    """``word`` written in one obfuscation ``style`` (see ``STYLES``); too-short words come back as they are."""
    if len(word) < 3:
        return word
    if style == "mask":
        # Keep the first letter (people do: "f***", "c*ck"); mask one to all-but-one inner letters.
        inner = range(1, len(word) - 1) if len(word) > 3 else range(1, len(word))
        masked = set(rng.sample(list(inner), rng.randint(1, max(1, len(inner) - 1))))
        return "".join("*" if i in masked else ch for i, ch in enumerate(word))
    if style == "leet":
        out = [rng.choice(_LEET[ch.lower()]) if ch.lower() in _LEET and rng.random() < 0.7 else ch for ch in word]
        return "".join(out) if out != list(word) else word[:-1] + "*"
    if style == "spaced":
        return rng.choice((" ", ".", "-", "_")).join(word) if rng.random() < 0.5 else " ".join(word)
    if style == "repeat":
        i = rng.randrange(len(word))
        return word[:i] + word[i] * rng.randint(2, 5) + word[i:]
    raise ValueError(f"unknown obfuscation style {style!r}; choose one of {STYLES}")


def _core(token: str) -> tuple[str, str, str]:
    """(leading punctuation, word, trailing punctuation) of a whitespace token."""
    start, end = 0, len(token)
    while start < end and not token[start].isalnum():
        start += 1
    while end > start and not token[end - 1].isalnum():
        end -= 1
    return token[:start], token[start:end], token[end:]


def obfuscate(
    text: str,
    rng: random.Random,
    targets: Collection[str] = (),
    *,
    target_rate: float = 0.8,
    noise_rate: float = 0.05,
    styles: Sequence[str] = STYLES,
) -> str:
    """``text`` with words in ``targets`` (lower case) and a few others written in obfuscated
    forms, each in a style drawn from ``styles`` (repeat a style to weight it)."""

    def rewrite(m: re.Match) -> str:
        pre, word, post = _core(m.group(0))
        rate = target_rate if word.lower() in targets else noise_rate
        if word and rng.random() < rate:
            word = obfuscate_word(word, rng.choice(styles), rng)
        return pre + word + post

    return re.sub(r"\S+", rewrite, text)  # line breaks stay: they are sentence boundaries


def has_target(text: str, targets: Collection[str]) -> bool:
    """True if a whitespace token of ``text`` (punctuation stripped, lower case) is in ``targets``."""
    return any(_core(tok)[1].lower() in targets for tok in text.split())


# --------------------------------------------------------------------------- undoing them

# Three or more single letters joined by one separator: "f u c k", "i.d.i.o.t", "s-h-i-t".
_SPACED = re.compile(r"(?<![\w*])(?:[^\W\d_][ ._-]){2,}[^\W\d_](?![\w*])")
# Only tokens that can hold a disguise reach Python: a letter beside a digit, @, $, ! or *,
# or a letter three times in a row (most tokens are plain words and cost one C-level scan).
_TOKEN = re.compile(r"[\w@$!*]*(?:[^\W\d_][\d@$!*]|[\d@$!*][^\W\d_]|([^\W\d_])\1\1)[\w@$!*]*")
_RUN = re.compile(r"([^\W\d_])\1{2,}")
_LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "9": "g", "$": "s", "@": "a", "!": "i"}
_LEET_INSIDE = re.compile(r"[^\W\d_][013457$@!9]+[^\W\d_]")


_ACCENTS = re.compile(r"(?<=[A-Za-z])[\u0300-\u036f]+")
_LOOKALIKES = str.maketrans({"ø": "o", "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "ı": "i", "ß": "ss"})


def strip_accents(text: str) -> str:
    """Latin letters without their accents (``fùcking``, ``asshøle``); other scripts unchanged."""
    if text.isascii():
        return text
    decomposed = _ACCENTS.sub("", unicodedata.normalize("NFD", text))
    return unicodedata.normalize("NFC", decomposed).translate(_LOOKALIKES)


class Deobfuscator:
    """Undoes disguised spellings: letters spaced out (``f u c k``), stretched (``stuuupid``),
    leetspeak (``sh1t``, ``b!tch``) and masked (``c*ck``, ``f**k``).

    ``words`` (most common first) settle what spelling alone cannot: ``assss`` is ``ass``
    not ``as``, ``$hit`` and ``bu11shit`` are listed words, ``g*y`` is the listed word of
    that shape. Without a fit, a stretch becomes one letter, leetspeak between letters is
    read as letters (``h3ll0`` stays: the digit is at the end), a mask stays (the
    classifier's character n-grams still read ``c*ck``)."""

    def __init__(self, words: Sequence[str] = ()):
        self.words = {w.lower() for w in words}
        self.by_shape: dict[tuple[int, str], list[str]] = {}
        for w in words:
            self.by_shape.setdefault((len(w), w[0].lower()), []).append(w.lower())

    def __call__(self, text: str) -> str:
        text = strip_accents(text)
        text = _SPACED.sub(self._spaced, text)
        return _TOKEN.sub(self._token, text)

    def _spaced(self, m: re.Match) -> str:
        """Spaced-out letters joined; where listed words cover them, split into those words and
        the single letters between ("a f u c k i n g" → "a fucking", "g a y a s s" → "gay ass")."""
        letters = re.sub(r"[ ._-]", "", m.group(0))
        n = len(letters)
        # best[i]: fewest parts for letters[:i], each part a listed word or one letter
        best: list[tuple[int, list[str]]] = [(0, [])] + [(n + 1, [])] * n
        for end in range(1, n + 1):
            for start in range(end):
                part = letters[start:end]
                if (end - start == 1 or part.lower() in self.words) and best[start][0] + 1 < best[end][0]:
                    best[end] = (best[start][0] + 1, best[start][1] + [part])
        parts = best[n][1]
        return " ".join(parts) if any(len(p) > 1 for p in parts) else letters

    def _token(self, m: re.Match) -> str:
        token = m.group(0)
        core = token.rstrip("!")
        bang = token[len(core) :]
        if not core:
            return token
        if _RUN.search(core):
            core = self._pick([_RUN.sub(r"\1", core), _RUN.sub(r"\1\1", core)], default=0)
        if any(ch in _LEET for ch in core) and not core.isdigit():
            plain = "".join(_LEET.get(ch, ch) for ch in core)
            options = [plain, "".join("l" if ch == "1" else _LEET.get(ch, ch) for ch in core)]
            hit = self._find(options)
            if hit is not None:
                core = _same_case(hit, core)
            elif _LEET_INSIDE.search(core) and not core[-1].isdigit():
                core = plain
        if "*" in core and core[0] != "*":
            core = self._unmask(core)
        return core + bang

    def _find(self, options: list[str]) -> str | None:
        return next((o for o in options if o.lower() in self.words), None)

    def _pick(self, options: list[str], default: int) -> str:
        hit = self._find(options)
        return hit if hit is not None else options[default]

    def _unmask(self, token: str) -> str:
        pattern = re.compile("".join("[a-z]" if ch == "*" else re.escape(ch) for ch in token.lower()))
        for word in self.by_shape.get((len(token), token[0].lower()), ()):
            if pattern.fullmatch(word):
                return _same_case(word, token)
        return token


def _same_case(word: str, like: str) -> str:
    return word.upper() if like.isupper() and len(like) > 1 else word


def deobfuscate(text: str, words: Sequence[str] = ()) -> str:
    """``Deobfuscator(words)(text)`` (build the Deobfuscator once when calling this often)."""
    return Deobfuscator(words)(text)
