"""Masking of personal information: email addresses, US phone numbers, IPv4 addresses.

Each function returns ``(masked_text, number_of_replacements)`` and replaces a match with a
fixed token, so a model trained on the text learns the token rather than the PII.
"""

from __future__ import annotations

import re

EMAIL_TOKEN = "|||EMAIL_ADDRESS|||"
PHONE_TOKEN = "|||PHONE_NUMBER|||"
IP_TOKEN = "|||IP_ADDRESS|||"

# local@domain.tld; the local part's characters follow RFC 5322's common subset.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")
# US numbers: optional +1, area code with or without parentheses, separators ' ', '-', '.'
# or none: 2831823829, (283)-182-3829, (283) 182 3829, 283-182-3829, +1 283.182.3829.
_PHONE = re.compile(r"(?<![\w+])(?:\+?1[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]?\d{3}[\s.-]?\d{4}(?!\w)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Four octets, not part of a longer dotted number (a version string like 1.2.3.4.5).
_IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\d|\.\d)")


def mask_emails(text: str) -> tuple[str, int]:
    return _EMAIL.subn(EMAIL_TOKEN, text)


def mask_phone_numbers(text: str) -> tuple[str, int]:
    return _PHONE.subn(PHONE_TOKEN, text)


def mask_ips(text: str) -> tuple[str, int]:
    return _IPV4.subn(IP_TOKEN, text)


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    """All three maskings; counts by kind (``emails``, ``phone_numbers``, ``ips``)."""
    text, emails = mask_emails(text)
    text, phones = mask_phone_numbers(text)
    text, ips = mask_ips(text)
    return text, {"emails": emails, "phone_numbers": phones, "ips": ips}
