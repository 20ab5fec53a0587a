"""How fast the diff of two long outputs is: gateway.replay.diff (RapidFuzz) against
difflib and, when installed, diff-match-patch in word mode. Prints figures; asserts nothing.

The texts are word-like tokens with a Zipf distribution and punctuation, as model output has
(a few very common words), tokenized the way gateway.replay.diff does.

    .venv/bin/python bench/diff_bench.py            # 100 KB outputs
    .venv/bin/python bench/diff_bench.py --slow     # also the cases that take minutes
"""

from __future__ import annotations

import argparse
import difflib
import random
import statistics
import time
from collections.abc import Callable

from gateway.replay import diff

VOCAB = [f"w{i}" for i in range(5000)]
WEIGHTS = [1 / (rank + 1) for rank in range(len(VOCAB))]  # Zipf: a few words are everywhere


def text(rng: random.Random, kb: int) -> str:
    words: list[str] = []
    size = 0
    while size < kb * 1024:
        word = rng.choices(VOCAB, WEIGHTS)[0]
        word += "," if rng.random() < 0.08 else "." if rng.random() < 0.07 else ""
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def edited(rng: random.Random, source: str, share: float) -> str:
    return " ".join(w if rng.random() > share else rng.choice(VOCAB) for w in source.split(" "))


def timed(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_diff(a: str, b: str) -> None:
    diff.text_ops(a, b)
    diff.similarity(a, b)


def difflib_diff(a: str, b: str, autojunk: bool) -> None:
    matcher = difflib.SequenceMatcher(None, diff.tokens(a)[1], diff.tokens(b)[1], autojunk=autojunk)
    matcher.get_opcodes()
    matcher.ratio()


def dmp_diff(a: str, b: str) -> None:
    import diff_match_patch  # optional: pip install diff-match-patch

    dmp = diff_match_patch.diff_match_patch()
    dmp.Diff_Timeout = 0  # exact, like the others
    words_a, words_b, table = _words_to_chars(a, b)
    diffs = dmp.diff_main(words_a, words_b, False)
    dmp.diff_charsToLines(diffs, table)


def _words_to_chars(a: str, b: str) -> tuple[str, str, list[str]]:
    table: list[str] = [""]
    index: dict[str, int] = {}

    def encode(text: str) -> str:
        out = []
        for word in text.split(" "):
            if word not in index:
                index[word] = len(table)
                table.append(word + " ")
            out.append(chr(index[word]))
        return "".join(out)

    return encode(a), encode(b), table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kb", type=int, default=100, help="size of each output")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--slow",
        action="store_true",
        help="also time the cases that take minutes (difflib and "
        "diff-match-patch on unrelated texts)",
    )
    args = parser.parse_args()
    rng = random.Random(1)
    base = text(rng, args.kb)
    cases = {
        "5% of words changed": edited(rng, base, 0.05),
        "50% of words changed": edited(rng, base, 0.5),
        "unrelated": text(rng, args.kb),
    }
    print(f"two outputs of {args.kb} KB ({len(diff.tokens(base)[1])} tokens each)")
    for name, other in cases.items():
        seconds = timed(lambda other=other: diff.text_diff(base, other), args.runs)
        print(
            f"  gateway.replay.diff (RapidFuzz, exact LCS)     {name:21} {seconds * 1000:9.1f} ms"
        )
    slow_cases = list(cases) if args.slow else ["5% of words changed"]
    for autojunk in (False, True):
        label = "difflib" + (" (autojunk: drops common words)" if autojunk else ", exact")
        for name in slow_cases:
            seconds = timed(lambda name=name, aj=autojunk: difflib_diff(base, cases[name], aj), 1)
            print(f"  {label:40}{name:21} {seconds * 1000:9.1f} ms")
    try:
        for name in slow_cases:
            seconds = timed(lambda name=name: dmp_diff(base, cases[name]), 1)
            print(f"  {'diff-match-patch, word mode':40}{name:21} {seconds * 1000:9.1f} ms")
    except ImportError:
        print("  diff-match-patch not installed (pip install diff-match-patch to compare)")


if __name__ == "__main__":
    main()
