"""PII masking: emails, US phone numbers and IPv4 addresses replaced by fixed tokens."""

from __future__ import annotations

from pydantic import Field

from lm.data.filters.base import Doc, Filter, FilterConfig
from lm.data.pii import mask_emails, mask_ips, mask_phone_numbers


class PIIConfig(FilterConfig):
    emails: bool = Field(True, description="replace email addresses with |||EMAIL_ADDRESS|||")
    phone_numbers: bool = Field(True, description="replace US phone numbers with |||PHONE_NUMBER|||")
    ips: bool = Field(True, description="replace IPv4 addresses with |||IP_ADDRESS|||")


class PIIFilter(Filter):
    """Rewrites the text; never rejects. Counts ``emails_masked``, ``phone_numbers_masked``,
    ``ips_masked``."""

    name = "pii"
    Config = PIIConfig
    description = "PII masking (never drops documents)"

    def transform(self, doc: Doc) -> dict[str, int]:
        counts = {}
        text = doc["text"]
        if self.config.emails:
            text, counts["emails_masked"] = mask_emails(text)
        if self.config.phone_numbers:
            text, counts["phone_numbers_masked"] = mask_phone_numbers(text)
        if self.config.ips:
            text, counts["ips_masked"] = mask_ips(text)
        doc["text"] = text
        return counts
