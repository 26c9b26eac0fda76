"""Compress, then answer: CPRS keeps what a long document says about the question, and an LLM answers from it.

The flow of upstream QwenLong-CPRS's ``examples/infer.py``: the long context goes through the critic, and only the
kept text goes into the LLM's prompt, so a small-context or cheap model can answer questions about a long
document. With ``CPRS_LLM_BASE_URL`` set to an OpenAI-compatible endpoint (``CPRS_LLM_MODEL``,
``CPRS_LLM_API_KEY``) the answer comes from that model; without one the example prints the prompt it would send::

    python examples/cascade.py
    CPRS_LLM_BASE_URL=http://localhost:8000/v1 CPRS_LLM_MODEL=Qwen2.5-7B-Instruct python examples/cascade.py
    python examples/cascade.py --file report.txt --query "What were the Q3 revenues?"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from compress_document import ANSWERING_SENTENCE, DEFAULT_ANSWER, DEFAULT_QUERY, gospel_text
from models import chat, llm_description

from cprs_core import CPRSCompressor, CPRSError

LLM_CONTEXT_TOKENS = 1000
"""Tokens of the document the answering LLM reads: cprs-mini's best-ranked sentences up to this size (49x smaller)."""
SYSTEM = "Answer the question from the excerpts of a long document. Answer in one sentence."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", type=Path, help="a UTF-8 text file (default: Matthew and Mark, KJV)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--instruction", default="fact", help="needle, fact, chain, or your own tagging rule")
    parser.add_argument("--target-tokens", type=int, default=LLM_CONTEXT_TOKENS, help="tokens of context the LLM gets")
    args = parser.parse_args()

    document = args.file.read_bytes() if args.file else gospel_text()
    compressor = CPRSCompressor.from_pretrained(device="cpu")
    try:
        kept = compressor.compress(document, args.query, args.instruction, target_tokens=args.target_tokens)
    except CPRSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    prompt = f"Excerpts:\n{kept.text}\n\nQuestion: {args.query}"
    print(f"question: {args.query}")
    print(f"compressed {kept.original_tokens:,} tokens to {kept.compressed_tokens:,} ({kept.ratio:.0f}x) for the LLM")
    if not args.file and args.query == DEFAULT_QUERY:
        found = any(ANSWERING_SENTENCE.search(span.text) for span in kept.spans)
        print(f"the answer ({DEFAULT_ANSWER}, in a sentence about his denial) is in the kept text: {'yes' if found else 'no'}")
    print(f"LLM: {llm_description()}")
    answer = chat(SYSTEM, prompt)
    if answer is None:
        print(f"prompt it would get ({len(prompt):,} characters instead of {len(document):,}):\n{prompt}")
    else:
        print(f"answer: {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
