from lm.data import gopher_quality_ok
from lm.data.quality import c4_clean, find_bad_word, gopher_reason, quality_features

GOOD = (
    "This is a perfectly ordinary paragraph of English prose. It talks about the weather, the town "
    "and the people who live there, and it has enough words of ordinary length to pass every rule. "
) * 5


def test_gopher_valid_input():
    assert gopher_quality_ok(GOOD)


def test_gopher_less_than_50_words():
    assert not gopher_quality_ok("The string you have entered does not contain enough words.")
    assert gopher_reason("The string you have entered does not contain enough words.") == "gopher_too_few_words"


def test_gopher_more_than_100000_words():
    assert gopher_reason("word " * 100_001) == "gopher_too_many_words"
    assert gopher_quality_ok("words " * 100_000)  # the bound itself passes


def test_gopher_mean_word_length():
    assert gopher_reason("a an I be to of it " * 20) == "gopher_mean_word_length"
    assert gopher_reason("extraordinarilylongword " * 60) == "gopher_mean_word_length"


def test_gopher_ellipsis_lines():
    text = "\n".join(["This line goes on and then trails off..."] * 4 + ["A normal line that simply ends here."] * 6)
    assert gopher_reason("\n".join([text] * 3)) == "gopher_ellipsis_lines"
    ok = "\n".join(["This line goes on and then trails off..."] * 3 + ["A normal line that simply ends here."] * 7)
    assert gopher_reason("\n".join([ok] * 3)) is None  # exactly 30% is allowed


def test_gopher_alpha_words():
    text = "house 1234 garden 5678 window 9012 kitchen 3456 " * 10  # half the words have no letter
    assert gopher_reason(text) == "gopher_alpha_words"


def test_gopher_empty_and_control_characters():
    assert gopher_reason("") == "gopher_too_few_words"
    assert gopher_quality_ok(GOOD.replace(" town ", " town\x07 "))


def test_c4_rules():
    page = "\n".join(
        ["Home", "Contact us", "This site uses cookies to improve your experience."]
        + [f"Sentence number {i} of the article ends properly." for i in range(6)]
    )
    cleaned, reason = c4_clean(page)
    assert reason is None
    assert cleaned.splitlines() == [f"Sentence number {i} of the article ends properly." for i in range(6)]
    assert c4_clean(page + "\nLorem ipsum dolor sit amet.") == (None, "c4_lorem_ipsum")
    assert c4_clean(page + "\nfunction f() { return 1; }") == (None, "c4_curly_brace")
    assert c4_clean("One sentence only.\nMenu") == (None, "c4_too_few_sentences")


def test_bad_words_whole_words_only():
    assert find_bad_word("A classic passage about glasses and assessments.") is None
    assert find_bad_word("What a load of BULLSHIT this is") == "bullshit"


def test_quality_features_marks_layout():
    assert quality_features("Home\nThis is a long sentence of prose that ends.") == (
        "__eol__ __short__ __noend__ Home\n__eol__ This is a long sentence of prose that ends."
    )
