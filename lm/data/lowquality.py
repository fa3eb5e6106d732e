"""Low-quality pages made from real text, for the quality classifier's held-out set.

A crawl holds more than menus and comments: keyword-stuffed doorway pages, template-spun
"articles" and machine-generated word salad. None of those ships labelled in a package
here, so the held-out set makes them the way spammers do, from real text of held-out
sources (never from training text):

* ``keyword_stuffed``: lines of a few keywords repeated, with a title and a call to action;
* ``spun_page``: spintax templates (``{Best|Top|Cheap} {kw} ...``) filled with keywords;
* ``MarkovChain``: a second-order word chain over real text, generating pages whose every
  word triple occurs in the source yet whose sentences mean nothing;
* boilerplate (navigation, footers) comes from real pages, in
  ``lm.data.classifier_data.crawl_boilerplate``.

Every generator takes a ``random.Random`` so a seed gives the same pages.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{3,}")
_STOP = frozenset(
    """this that with from have will your they them there their what when which would could
should about into than then these those were been being also just like more most some such only over very
here where while after before because other first last many much make made does did done each every""".split()
)


def keywords(texts: Iterable[str], n: int = 200) -> list[str]:
    """The ``n`` most frequent content words (4+ letters, not a stop word) of ``texts``, lower case."""
    counts = Counter(w.lower() for t in texts for w in _WORD.findall(t) if w.lower() not in _STOP)
    return [w for w, _ in counts.most_common(n)]


def _phrase(rng: random.Random, words: Sequence[str]) -> str:
    return " ".join(rng.sample(list(words), rng.randint(1, 3)))


def keyword_stuffed(rng: random.Random, words: Sequence[str], lines: int = 12) -> str:
    """A doorway page: a title, lines of repeated keyword phrases, a call to action."""
    main = _phrase(rng, words)
    out = [f"{main.title()} | {main} online | best {main} cheap"]
    for _ in range(lines):
        kws = [main] + [_phrase(rng, words) for _ in range(rng.randint(3, 8))]
        rng.shuffle(kws)
        out.append(rng.choice([", ", " ", " - ", " | "]).join(kws))
    out.append(f"Click here for {main}! Buy {main} now, free shipping on {main}.")
    return "\n".join(out)


# Two template sets: the held-out pages are spun from ``HELDOUT_SPINTAX``, training's from
# ``TRAINING_SPINTAX`` (other wording, other keywords), so a model must generalize from one to the other.
HELDOUT_SPINTAX = [
    (
        "{Looking for|Searching for|Need} {KW}? {We offer|Find|Get} the "
        "{best|top|cheapest|most affordable} {KW} {online|today|near you}."
    ),
    "{Our|The} {KW} {is|are} {rated|reviewed|ranked} #1 by {thousands of|many|happy} {customers|users|clients}.",
    "{Buy|Order|Shop} {KW} {now|today} and {save|get} {up to 70%|50% off|a free gift}!",
    "{Why|How} {choose|pick|select} {KW}? {Because|Since} {KW} {is|are} {the best|great|amazing} for {KW2}.",
    "{Click here|Visit us|Call now} {to learn more about|for|and discover} {KW} and {KW2}.",
    "{KW} {tips|guide|reviews} {2024|2025|for beginners}: {everything|all} you need to know about {KW2}.",
    "{Top|Best} {10|7|5} {KW} {deals|offers|sites} - {KW2} {cheap|discount|sale}.",
]
TRAINING_SPINTAX = [
    (
        "{Welcome to|Discover|Explore} our {KW} {store|shop|website}, "
        "{your|the} {number one|leading|trusted} source for {KW2}."
    ),
    (
        "{We have|We carry|You will find} {a huge|a wide|the largest} "
        "{selection|range|choice} of {KW} at {unbeatable|low|great} prices."
    ),
    (
        "{Don't miss|Hurry up for|Check out} {our|this week's|today's} "
        "{special|exclusive|limited} {offer|deal|promotion} on {KW}."
    ),
    (
        "{Many|Most|All} {experts|people|buyers} {agree|say|know} "
        "that {KW} {is|are} {essential|important|a must} for {KW2}."
    ),
    "{Sign up|Subscribe|Register} {now|today|for free} {and|to} {receive|get} {KW2} {news|updates|coupons}.",
    "{Read|See|Compare} {our|the latest|honest} {KW} {reviews|ratings|comparisons} {before you buy|and save money}.",
    "{Fast|Free|Express} {delivery|shipping} {on all|for every} {KW} {order|purchase} {over $50|worldwide|today}.",
]
_CHOICE = re.compile(r"\{([^{}]*\|[^{}]*)\}")


def spin(rng: random.Random, template: str) -> str:
    """One rendering of a spintax ``template``: each ``{a|b|c}`` replaced by one of its options."""
    return _CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), template)


def spun_page(
    rng: random.Random, words: Sequence[str], sentences: int = 10, templates: Sequence[str] = HELDOUT_SPINTAX
) -> str:
    """A template-spun 'article' about keywords: one spintax sentence (of ``templates``) a line."""
    kw, kw2 = _phrase(rng, words), _phrase(rng, words)
    out = [f"{kw.title()}: {spin(rng, '{The Complete|The Ultimate|Your} {Guide|Review}')}"]
    for _ in range(sentences):
        out.append(spin(rng, rng.choice(templates)).replace("{KW}", kw).replace("{KW2}", kw2))
    return "\n".join(out)


class MarkovChain:
    """Second-order word chain over texts; line breaks are kept as tokens."""

    def __init__(self, texts: Iterable[str]):
        self.next: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.starts: list[tuple[str, str]] = []
        for text in texts:
            tokens = [tok for line in text.splitlines() if line.strip() for tok in line.split() + ["\n"]]
            for i in range(len(tokens) - 2):
                key = (tokens[i], tokens[i + 1])
                self.next[key].append(tokens[i + 2])
                if i == 0 or tokens[i - 1] == "\n":
                    self.starts.append(key)
        if not self.starts:
            raise ValueError(f"MarkovChain needs a line of at least two words; got {len(self.next)} word pairs")

    def page(self, rng: random.Random, words: int = 150) -> str:
        """About ``words`` words of generated text (restarting at a random start where the chain ends)."""
        a, b = rng.choice(self.starts)
        out = [a, b]
        while sum(tok != "\n" for tok in out) < words:
            options = self.next.get((a, b))
            if not options:
                a, b = rng.choice(self.starts)
                out += ["\n", a, b]
                continue
            a, b = b, rng.choice(options)
            out.append(b)
        return "\n".join(" ".join(line.split()) for line in " ".join(out).split("\n") if line.strip())
