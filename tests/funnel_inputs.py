"""Build an 'extract'-like stage (id, url, source, text) from real text for funnel tests.

Real Common Crawl pages (the WARC/WET samples, HTML extracted with resiliparse), the CS336
fixtures (moby, a Wikipedia-like article, a low-quality page, duplicate documents) and a
few bad records (empty text, one enormous line, control characters).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa

from lm.data.classifier_data import crawl_texts
from lm.data.shards import Stage

SCHEMA = pa.schema([("id", pa.string()), ("url", pa.string()), ("source", pa.string()), ("text", pa.string())])


def documents(reference: Path) -> list[dict]:
    cc = reference / "commoncrawl"
    fx = reference / "assignment4-data/fixtures"
    docs = []
    for path in ["warcfile.warc.gz", "clueweb-quirk.warc.gz", "whirlwind.warc.wet.gz"]:
        for i, text in enumerate(crawl_texts([str(cc / path)])):
            docs.append({"url": f"cc://{path}/{i}", "source": f"{path}:{i}", "text": text})
    wiki = (fx / "high_quality_wiki_reference.txt").read_text()
    paras = [p for p in wiki.split("\n") if len(p) > 400]
    articles = [paras[i] + "\n" + paras[i + 1] for i in range(2, 26, 2)]  # clean English documents
    for i, text in enumerate(articles):
        docs.append({"url": f"wiki://{i}", "source": f"wiki:{i}", "text": text})
    # A near-duplicate of wiki://0 (one word changed per line, so no line is an exact
    # duplicate) and an exact copy of wiki://1 (line dedup empties both copies).
    edited = "\n".join(line.replace(" the ", " a ", 1) for line in articles[0].split("\n"))
    docs.append({"url": "wiki://0-edited", "source": "dup", "text": edited})
    docs.append({"url": "wiki://1-copy", "source": "dup", "text": articles[1]})
    for name in ["moby_extracted.txt", "low_quality_cc.txt"]:
        docs.append({"url": f"fixture://{name}", "source": name, "text": (fx / name).read_text()})
    for name in ["rails_mit_license.txt", "react_mit_license.txt", "pytorch_license.txt"]:
        docs.append(
            {
                "url": f"fixture://{name}",
                "source": name,
                "text": (fx / "documents_with_fuzzy_duplicates" / name).read_text(),
            }
        )
    docs.append({"url": "bad://empty", "source": "bad", "text": ""})
    moby = (fx / "moby_extracted.txt").read_text().replace("\n", " ")
    docs.append({"url": "bad://huge-line", "source": "bad", "text": " ".join([moby] * 1500)})  # 1 MB, one line
    docs.append(
        {
            "url": "bad://control",
            "source": "bad",
            "text": "\x00\x01\x02 Contact me at a@b.com or 283-182-3829 \x1b[0m" * 3,
        }
    )
    for d in docs:
        d["id"] = hashlib.sha256(d["url"].encode()).hexdigest()[:16]
    return docs


def make_extract(root: Path, reference: Path, num_shards: int = 3) -> str:
    docs = documents(reference)
    st = Stage(root, "extract", version="test", config={"fixture": "funnel"})
    for i in range(num_shards):
        with st.open_shard(i, schema=SCHEMA) as w:
            for d in docs[i::num_shards]:
                w.count_in()
                w.write(d)
    return str(st.commit(num_shards=num_shards))
