"""Language identification (fastText ``lid.176``): keep documents in the chosen languages."""

from __future__ import annotations

import difflib

from pydantic import Field

from lm.data.classifier import load_classifier
from lm.data.filters.base import Doc, Filter, FilterConfig
from lm.data.langid import identify_language, lid_model_path


class LangIdConfig(FilterConfig):
    languages: list[str] = Field(
        ["en"],
        max_length=256,
        description="language codes to keep (ISO 639 as lid.176 writes them: en, de, zh, …); empty keeps all",
    )
    min_score: float = Field(0.65, ge=0.0, le=1.0, description="minimum probability of the detected language")


class LanguageFilter(Filter):
    """Annotates ``language`` and ``language_score``; rejects ``language_not_kept`` and
    ``language_low_score``."""

    name = "langid"
    Config = LangIdConfig
    description = "language identification (fastText lid.176)"
    columns = {"language": "string", "language_score": "float64"}

    def model_files(self) -> dict[str, str]:
        return {"lid_model": str(lid_model_path())}  # fetched here (once) if missing

    def check(self) -> None:
        """Every language code must be a label of the model: ``english`` fails, naming ``en``."""
        if not self.config.languages:
            return
        labels = sorted(lab.removeprefix("__label__") for lab in load_classifier(lid_model_path()).get_labels())
        for code in self.config.languages:
            if code not in labels:
                raise ValueError(
                    f"langid.languages: {code!r} is not a language of the model; {_did_you_mean(code, labels)}"
                )

    def keep(self, doc: Doc) -> tuple[bool, str | None]:
        lang, score = identify_language(doc["text"])
        doc["language"], doc["language_score"] = lang, round(score, 4)
        if self.config.languages and lang not in self.config.languages:
            return False, "language_not_kept"
        if score < self.config.min_score:
            return False, "language_low_score"
        return True, None


# English names of the most common lid.176 languages, so "english" can point at "en".
_NAMES = {
    "english": "en",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "russian": "ru",
    "chinese": "zh",
    "japanese": "ja",
    "korean": "ko",
    "arabic": "ar",
    "hindi": "hi",
    "polish": "pl",
    "turkish": "tr",
    "swedish": "sv",
    "danish": "da",
    "norwegian": "no",
    "finnish": "fi",
    "greek": "el",
    "czech": "cs",
    "hungarian": "hu",
    "romanian": "ro",
    "ukrainian": "uk",
    "vietnamese": "vi",
    "indonesian": "id",
    "persian": "fa",
    "hebrew": "he",
    "thai": "th",
    "catalan": "ca",
}


def _did_you_mean(code: str, labels: list[str]) -> str:
    low = code.strip().lower()
    guess = _NAMES.get(low) or (low if low in labels else None)
    if guess is None:
        close = difflib.get_close_matches(low, labels, n=3)
        guess = close[0] if close else None
    hint = f"did you mean {guess!r}? " if guess else ""
    return f"{hint}codes are ISO 639 as lid.176 labels them, e.g. en, de, fr, zh, ja"
