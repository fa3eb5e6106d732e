"""Benchmark: our BPE trainer and encoders side by side with Hugging Face tokenizers and tiktoken.

    nice -n 10 python bench/tokenizer.py                # 50 MB + 200 MB corpora, ~8 min on 2 cores
    nice -n 10 python bench/tokenizer.py --sizes 50     # one size only

Corpora are real text built once under ``$LMPIPE_CACHE/bench`` (default ~/.cache/lmpipe):
GSM8K/MMLU/AlpacaEval/SimpleSafetyTests from ../shared/reference, the GNU Collaborative
International Dictionary of English (``apt-get install dict-gcide``), then (for larger
sizes) Python's standard library sources and the system's man pages. Documents are
separated by ``<|endoftext|>``.

Measured, each training run in its own subprocess (peak RSS = the whole process tree's
resident memory, sampled every 20 ms, so our pre-tokenization workers count):
  1. training, vocab 10,000, GPT-2 regex, <|endoftext|>: ours vs HF ``BpeTrainer``;
  2. corpus.en with vocab 500 (the CS336 speed test);
  3. encoding MB/s in one thread on the same text: our pure-Python encoder, our fast
     (tiktoken-backed) path, and tiktoken's GPT-2 directly.
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
REFERENCE = Path(os.environ.get("LMPIPE_REFERENCE", REPO.parent / "shared" / "reference"))
if not REFERENCE.is_dir():
    REFERENCE = Path("/work/shared/reference")
EOT = "<|endoftext|>"


# --------------------------------------------------------------------------- corpus


def _sources():
    """Documents of real text, in a fixed order."""
    data = REFERENCE / "assignment5-alignment" / "data"
    for path in sorted(glob.glob(str(data / "**" / "*"), recursive=True)):
        if path.endswith(".jsonl"):
            for line in open(path, encoding="utf-8"):
                yield "\n\n".join(str(v) for v in json.loads(line).values() if isinstance(v, str))
        elif path.endswith(".csv"):
            for row in csv.reader(open(path, encoding="utf-8")):
                yield "\n".join(row)
    gcide = Path("/usr/share/dictd/gcide.dict.dz")
    if not gcide.exists():
        raise SystemExit("the benchmark corpus needs GCIDE: apt-get update && apt-get install dict-gcide")
    with gzip.open(gcide, "rt", encoding="utf-8", errors="replace") as f:
        entry: list[str] = []
        for line in f:
            entry.append(line)
            if len(entry) >= 200:
                yield "".join(entry)
                entry = []
    stdlib = Path(os.__file__).parent
    for path in sorted(stdlib.rglob("*.py")):
        if "site-packages" not in path.parts:
            yield path.read_text(encoding="utf-8", errors="replace")
    for path in sorted(glob.glob("/usr/share/man/**/*.gz", recursive=True)):
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
                yield f.read()
        except OSError:
            continue


def build_corpus(size_mb: int) -> Path:
    cache = Path(os.environ.get("LMPIPE_CACHE", Path.home() / ".cache" / "lmpipe")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"tokenizer-corpus-{size_mb}mb.txt"
    if path.exists():
        return path
    target = size_mb * 1_000_000
    tmp = path.with_suffix(".tmp")
    written = 0
    with open(tmp, "wb") as f:
        for doc in _sources():
            data = doc.encode("utf-8", "replace") + EOT.encode()
            f.write(data)
            written += len(data)
            if written >= target:
                break
    if written < target:
        raise SystemExit(f"only {written / 1e6:.0f} MB of real text found for a {size_mb} MB corpus")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------- measurement


def _tree_rss_kb(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run_child(args: list[str]) -> dict:
    """Run this script in child mode; returns its JSON plus wall time and peak tree RSS."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kb(proc.pid))
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"child {args} failed with {proc.returncode}")
    res = json.loads(out.strip().splitlines()[-1])
    res.update(wall_s=round(time.perf_counter() - start, 2), peak_rss_mb=round(peak / 1024, 1))
    return res


def child(mode: str, corpus: str, vocab_size: int, out_dir: str) -> None:
    import resource

    if mode == "ours":
        from lm.tokenizer import Tokenizer, train_bpe

        t = time.perf_counter()
        stats: dict = {}
        vocab, merges = train_bpe(corpus, vocab_size, [EOT], stats=stats)
        elapsed = time.perf_counter() - t
        if out_dir:
            Tokenizer(vocab, merges, [EOT]).save(out_dir)
        res = {
            "train_s": round(elapsed, 2),
            "vocab": len(vocab),
            "pretokenize_s": stats["pretokenize_seconds"],
            "merge_s": stats["merge_seconds"],
            "distinct_pretokens": stats["distinct_pretokens"],
        }
    else:
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

        from lm.tokenizer.gpt2 import GPT2_PATTERN

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        t = time.perf_counter()
        tok.train([corpus], trainer)
        res = {"train_s": round(time.perf_counter() - t, 2), "vocab": tok.get_vocab_size()}
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    res["self_maxrss_mb"] = round(me.ru_maxrss / 1024, 1)
    # CPU seconds of the process and its workers: comparable even on a loaded machine.
    res["cpu_s"] = round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2)
    print(json.dumps(res))


def encode_mbps(fn, text: str, repeat: int = 1) -> float:
    nbytes = len(text.encode("utf-8"))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - t)
    return round(nbytes / best / 1e6, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[50, 200], help="corpus sizes in MB (ours at each; HF at the first)"
    )
    ap.add_argument("--vocab-size", type=int, default=10_000)
    ap.add_argument("--encode-mb", type=float, default=4.0, help="MB of text for the encoding benchmark")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "CORPUS", "VOCAB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, corpus, vocab, out = args.child
        return child(mode, corpus, int(vocab), out)

    from lm.tokenizer import Tokenizer, train_bpe
    from lm.tokenizer.gpt2 import GPT2_PATTERN, decode_token

    print(f"cores: {os.cpu_count()}  load average: {os.getloadavg()}")
    print("(wall times stretch when other jobs share the cores; cpu_s does not)")
    corpora = {mb: build_corpus(mb) for mb in args.sizes}
    fixtures = REFERENCE / "assignment1-basics" / "fixtures"

    # 1. corpus.en / 500, in process (best of 5)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        train_bpe(fixtures / "corpus.en", 500, [EOT])
        times.append(time.perf_counter() - t)
    print(f"\ncorpus.en vocab 500: best {min(times):.3f} s, median {sorted(times)[2]:.3f} s (target < 0.5 s)")

    # 2. training: ours vs HF at the first size, ours at the others
    tok_dir = tempfile.mkdtemp(prefix="bench-tok-")
    rows = []
    first = args.sizes[0]
    for mb in args.sizes:
        ours = run_child(["ours", str(corpora[mb]), str(args.vocab_size), tok_dir if mb == first else ""])
        rows.append(("ours", mb, ours))
        print(f"ours  {mb:>4} MB: {ours}", flush=True)
        if mb == first:
            hf = run_child(["hf", str(corpora[mb]), str(args.vocab_size), ""])
            rows.append(("hf", mb, hf))
            print(f"hf    {mb:>4} MB: {hf}", flush=True)
            print(
                f"  ratio time ours/hf = {ours['train_s'] / hf['train_s']:.2f} (target <= 2), "
                f"CPU seconds ours/hf = {ours['cpu_s'] / hf['cpu_s']:.2f}, "
                f"peak RSS ours/hf = {ours['peak_rss_mb'] / hf['peak_rss_mb']:.2f} (target <= 1)"
            )
    if len(args.sizes) > 1:
        a, b = [r for r in rows if r[0] == "ours"][:2]
        print(
            f"  ours peak RSS {a[1]} MB -> {b[1]} MB corpus: {a[2]['peak_rss_mb']} -> {b[2]['peak_rss_mb']} MB "
            f"({b[2]['peak_rss_mb'] / a[2]['peak_rss_mb']:.2f}x for {b[1] / a[1]:.0f}x the bytes)"
        )

    # 3. encoding throughput on the same held-out real text (the tail of the first corpus)
    import tiktoken

    with open(corpora[first], "rb") as f:
        f.seek(max(0, os.path.getsize(corpora[first]) - int(args.encode_mb * 1e6)))
        text = f.read().decode("utf-8", "replace").replace(EOT, "\n")
    ours_fast = Tokenizer.load(tok_dir)
    ours_py = Tokenizer.load(tok_dir, use_fast=False)
    gpt2_py = Tokenizer.from_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt", [EOT], use_fast=False)
    gpt2_fast = Tokenizer.from_files(fixtures / "gpt2_vocab.json", fixtures / "gpt2_merges.txt", [EOT])
    raw = json.loads((fixtures / "gpt2_vocab.json").read_text(encoding="utf-8"))
    tik = tiktoken.Encoding(
        "gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={decode_token(k): v for k, v in raw.items() if k != EOT},
        special_tokens={EOT: 50256},
    )
    assert ours_fast.fast_path is not None, ours_fast.fast_path_reason
    assert ours_fast.encode(text) == ours_py.encode(text)
    print(f"\nencoding {len(text.encode()) / 1e6:.1f} MB, one thread, MB/s:")
    results = {
        "ours-10k pure Python": encode_mbps(ours_py.encode, text),
        "ours-10k fast path (tiktoken)": encode_mbps(ours_fast.encode, text, 3),
        "GPT-2 pure Python": encode_mbps(gpt2_py.encode, text),
        "GPT-2 fast path": encode_mbps(gpt2_fast.encode, text, 3),
        "tiktoken GPT-2 encode_ordinary": encode_mbps(tik.encode_ordinary, text, 3),
    }
    for k, v in results.items():
        print(f"  {k:<34} {v:>7.2f}")
    print(f"  load average after: {os.getloadavg()}")
    print(
        f"  fast path / tiktoken (GPT-2): {results['GPT-2 fast path'] / results['tiktoken GPT-2 encode_ordinary']:.2f}"
    )


if __name__ == "__main__":
    main()
