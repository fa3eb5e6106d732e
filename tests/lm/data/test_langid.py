import pytest

from lm.data import identify_language


def test_english_moby(reference):
    text = (reference / "assignment4-data/fixtures/moby_extracted.txt").read_text()
    lang, score = identify_language(text)
    assert lang == "en"
    assert 0 < score <= 1


def test_chinese():
    lang, score = identify_language("中国是世界上人口最多的国家之一，拥有悠久的历史和灿烂的文化。")
    assert lang == "zh"
    assert 0 < score <= 1


@pytest.mark.parametrize("text", ["", "   \n\t ", "12345 67.89 !!!"])
def test_no_letters_is_unknown(text):
    assert identify_language(text) == ("unknown", 0.0)


def test_control_characters_and_one_enormous_line(reference):
    moby = (reference / "assignment4-data/fixtures/moby_extracted.txt").read_text()
    lang, _ = identify_language("\x00\x07\x1b[31m" + moby.replace("\n", "\x0b\x0c"))
    assert lang == "en"
    lang, score = identify_language(" ".join([moby.replace("\n", " ")] * 2000))  # ~1.3 MB, one line
    assert lang == "en" and score > 0.5
