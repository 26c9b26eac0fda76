"""CPU cost of structure-preserving JSON pruning of a 3,000-record tool output with the embedded cprs-mini.

Measured in one run, each the median of ``--repeats`` after a warm-up:

* ``prune_json`` (after one warm-up call): units, critic over their lines, rebuilt JSON and note (end to end);
* baseline ``compress`` of the same records as plain JSON text (``json.dumps``, sentence granularity): the
  cost of text compression on the same content, which loses the JSON structure;
* ``json_units`` alone: cutting the value into units and their lines (part of ``prune_json``'s own overhead).

Usage (from the repository root)::

    python -m benchmarks.json_pruning --records 3000 --threads 2
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch

from benchmarks.timing import median_seconds
from cprs_core import CPRSCompressor
from cprs_core.structured import json_units, prune_json

QUERY = "Which order was delivered to Lisbon, and what is its tracking number?"
CITIES = ["Oslo", "Berlin", "Madrid", "Vienna", "Dublin", "Prague", "Warsaw", "Athens", "Zurich", "Helsinki"]
ITEMS = ["desk lamp", "office chair", "bookshelf", "monitor arm", "keyboard", "standing desk", "cable tray"]


def tool_output(records: int) -> dict[str, Any]:
    """``records`` order records (about 50 MiniLM tokens each), one of them answering :data:`QUERY`."""
    orders = [{"order": f"A-{1000 + i}", "item": ITEMS[i % len(ITEMS)], "status": "in transit",
               "ship_to": CITIES[i % len(CITIES)], "tracking": f"TRK{(i * 7919) % 100000:05d}"} for i in range(records)]
    orders[records * 2 // 3] = {"order": "A-LIS", "item": "bookshelf", "status": "delivered", "ship_to": "Lisbon",
                                "tracking": "TRK55120"}
    return {"customer": "Ines", "count": records, "orders": orders}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    compressor = CPRSCompressor.from_pretrained("cprs-mini", device="cpu")
    value = tool_output(args.records)
    text = json.dumps(value, ensure_ascii=False)
    pruned = prune_json(compressor, value, QUERY, "needle")
    structured = median_seconds(lambda: prune_json(compressor, value, QUERY, "needle"), args.repeats)
    plain = median_seconds(lambda: compressor.compress(text, QUERY, "needle", granularity="sentence"), args.repeats)
    units = median_seconds(lambda: json_units(value), args.repeats)
    found = any(order.get("ship_to") == "Lisbon" for order in pruned.value.get("orders", []))
    print(f"records: {args.records}; JSON text: {len(text):,} chars, {pruned.result.original_tokens:,} critic tokens "
          f"over {pruned.total_units} units; threads: {args.threads}")
    print(f"prune_json (end to end):          {structured:.2f} s; kept {pruned.kept_units} units, "
          f"{pruned.result.compressed_tokens:,} tokens; Lisbon record kept: {found}")
    print(f"baseline compress of JSON text:   {plain:.2f} s (sentence granularity; structure not kept)")
    print(f"json_units alone:                 {units * 1000:.0f} ms")
    print(f"note: {pruned.note}")


if __name__ == "__main__":
    main()
