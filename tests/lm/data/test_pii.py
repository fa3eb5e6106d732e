import pytest

from lm.data import mask_emails, mask_ips, mask_phone_numbers
from lm.data.pii import mask_pii


def test_mask_emails_single():
    text = "Feel free to contact me at test@gmail.com if you have any questions."
    assert mask_emails(text) == ("Feel free to contact me at |||EMAIL_ADDRESS||| if you have any questions.", 1)


def test_mask_emails_multiple():
    text = "The instructors are pl@fakedomain.ai and spl@fakedomain.ai"
    assert mask_emails(text) == ("The instructors are |||EMAIL_ADDRESS||| and |||EMAIL_ADDRESS|||", 2)


def test_mask_emails_existing_token_untouched():
    text = (
        "Some datasets use the string |||EMAIL_ADDRESS||| to represent masked PII. The instructors are pl@fakedomain.ai"
    )
    masked, n = mask_emails(text)
    assert n == 1
    assert masked == (
        "Some datasets use the string |||EMAIL_ADDRESS||| to "
        "represent masked PII. The instructors are |||EMAIL_ADDRESS|||"
    )


@pytest.mark.parametrize("number", ["2831823829", "(283)-182-3829", "(283) 182 3829", "283-182-3829"])
def test_mask_phone_numbers(number):
    text = f"Feel free to contact me at {number} if you have any questions."
    assert mask_phone_numbers(text) == ("Feel free to contact me at |||PHONE_NUMBER||| if you have any questions.", 1)


def test_mask_ips():
    assert mask_ips("You can access the server at 1.2.3.4.") == ("You can access the server at |||IP_ADDRESS|||.", 1)


@pytest.mark.parametrize("text", ["version 1.2.3.4.5 released", "not an ip: 256.1.1.1", "3.14159"])
def test_ip_lookalikes_left_alone(text):
    assert mask_ips(text) == (text, 0)


def test_no_pii_and_empty():
    assert mask_phone_numbers("") == ("", 0)
    assert mask_pii("In 1492 Columbus sailed 3000 miles.") == (
        "In 1492 Columbus sailed 3000 miles.",
        {"emails": 0, "phone_numbers": 0, "ips": 0},
    )


def test_mask_pii_all_kinds_counts():
    masked, counts = mask_pii("mail a@b.org or call 283-182-3829 from 10.0.0.1\x00")
    assert masked == "mail |||EMAIL_ADDRESS||| or call |||PHONE_NUMBER||| from |||IP_ADDRESS|||\x00"
    assert counts == {"emails": 1, "phone_numbers": 1, "ips": 1}
