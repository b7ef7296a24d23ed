#!/usr/bin/env python3
"""Side-by-side tables for docs/BENCHMARKS.md from the results scripts/benchmarks.sh wrote.

Usage: bench_tables.py OUT_DIR  (prints markdown)
"""
import json
import sys
from pathlib import Path

QUANTS = ["f16", "q8_0", "q6_k", "q5_k", "q5_0", "q4_k", "q4_0", "q4_1"]


def load(path):
    p = Path(path) / "results.json"
    return json.loads(p.read_text())["scenarios"] if p.exists() else []


def find(scenarios, quant, words, conc):
    for s in scenarios:
        if s["model"] == f"smollm2-{quant}" and s["prompt_words"] == words and s["concurrency"] == conc:
            return s
    return None


def decode(s):
    return 1000.0 / s["tpot_ms"]["p50"] if s and s["tpot_ms"]["p50"] > 0 else None


def fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def main(out):
    out = Path(out)
    lc = load(out / "llamagate-llama.cpp")
    mr = load(out / "llamagate-mistralrs") + load(out / "llamagate-mistralrs-long")
    py = []
    for q in QUANTS:
        py += load(out / "llama-cpp-python" / q)

    print("### One request at a time (short prompt, 128 tokens)\n")
    print("decode tok/s = 1000 / TPOT p50; ratio = llamagate (llama.cpp engine) ÷ llama-cpp-python.\n")
    print("| quant | MB | bits/weight | decode tok/s: llamagate llama.cpp | llamagate mistral.rs | llama-cpp-python | decode ratio | TTFT p50 ms: llamagate llama.cpp | llamagate mistral.rs | llama-cpp-python | TTFT ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for q in QUANTS:
        a, b, c = find(lc, q, 0, 1), find(mr, q, 0, 1), find(py, q, 0, 1)
        ref = a or b
        mb = ref["size_bytes"] / 1e6 if ref and ref.get("size_bytes") else None
        bpw = ref.get("bits_per_weight") if ref else None
        ratio = decode(a) / decode(c) if decode(a) and decode(c) else None
        tratio = a["ttft_ms"]["p50"] / c["ttft_ms"]["p50"] if a and c else None
        ttft = lambda s: s["ttft_ms"]["p50"] if s else None
        print(f"| {q.upper()} | {fmt(mb)} | {fmt(bpw, 2)} | {fmt(decode(a))} | {fmt(decode(b))} | {fmt(decode(c))} | {fmt(ratio, 2)}× | {fmt(ttft(a), 0)} | {fmt(ttft(b), 0)} | {fmt(ttft(c), 0)} | {fmt(tratio, 2)}× |")

    print("\n### Aggregate output tok/s by concurrency (short prompt, 128 tokens)\n")
    print("llama-cpp-python runs one request at a time (concurrent ones queue), so only 1 and 4 are shown.\n")
    print("| quant | llama.cpp c=1 | c=2 | c=4 | c=8 | c4 ÷ c1 | mistral.rs c=1 | c=2 | c=4 | c=8 | c4 ÷ c1 | llama-cpp-python c=1 | c=4 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for q in QUANTS:
        t = lambda rows, c: (find(rows, q, 0, c) or {}).get("output_tokens_per_s")
        def scale(rows):
            one, four = t(rows, 1), t(rows, 4)
            return f"{four / one:.2f}×" if one and four else "–"
        print(f"| {q.upper()} | " + " | ".join(fmt(t(lc, c)) for c in (1, 2, 4, 8)) + f" | {scale(lc)} | "
              + " | ".join(fmt(t(mr, c)) for c in (1, 2, 4, 8)) + f" | {scale(mr)} | "
              + " | ".join(fmt(t(py, c)) for c in (1, 4)) + " |")

    print("\n### Long prompt (~512 words), one request at a time\n")
    print("prompt tok/s = prompt tokens ÷ TTFT p50 (llama-cpp-python streams no usage; the prompt is the same, so llamagate's token count is used).\n")
    print("| quant | prompt tokens | TTFT p50 ms: llamagate llama.cpp | llamagate mistral.rs | llama-cpp-python | prompt tok/s: llamagate llama.cpp | llamagate mistral.rs | llama-cpp-python |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for q in QUANTS:
        a, b, c = find(lc, q, 512, 1), find(mr, q, 512, 1), find(py, q, 512, 1)
        tokens = (a or b or {}).get("prompt_tokens")
        ttft = lambda s: s["ttft_ms"]["p50"] if s else None
        rate = lambda s: tokens / (s["ttft_ms"]["p50"] / 1000) if s and tokens else None
        print(f"| {q.upper()} | {fmt(tokens, 0)} | {fmt(ttft(a), 0)} | {fmt(ttft(b), 0)} | {fmt(ttft(c), 0)} | {fmt(rate(a), 0)} | {fmt(rate(b), 0)} | {fmt(rate(c), 0)} |")

    print("\n### Gateway overhead (Q4_1, in-process vs HTTP, same loaded model)\n")
    print("| engine | TTFT p50 in-process ms | TTFT p50 HTTP ms | added ms | decode tok/s in-process | HTTP | lost |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for engine in ("llama.cpp", "mistralrs"):
        p = out / f"overhead-{engine}" / "overhead.json"
        if not p.exists():
            continue
        r = json.loads(p.read_text())
        print(f"| {engine} | {r['in_process']['ttft_ms']['p50']:.1f} | {r['http']['ttft_ms']['p50']:.1f} | {r['ttft_p50_added_ms']:+.2f} | "
              f"{r['in_process']['decode_tokens_per_s']:.1f} | {r['http']['decode_tokens_per_s']:.1f} | {r['decode_loss_percent']:.2f}% |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
