"""GGUF metadata helpers that need no torch (numpy and gguf only), shared by common.py and
make_quantized.py (which runs where torch is absent: the development machine)."""

import json

def add_gguf_tokenizer(writer, tokenizer_json, vocab_size):
    """GGUF `gpt2` tokenizer metadata from a byte-level BPE tokenizer.json, as llama.cpp's
    converter writes it (like make_reference.gguf_tokenizer_kv, without the tokenizers package),
    padded with unreachable `<pad_N>` tokens up to vocab_size so that every id the model can
    produce has a token (hoist run refuses GGUF files without a tokenizer)."""
    with open(tokenizer_json) as f:
        data = json.load(f)
    vocab = data["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    if any(t is None for t in tokens):
        raise ValueError(f"{tokenizer_json}: token ids are not contiguous")
    specials = {a["id"] for a in data.get("added_tokens", []) if a.get("special")}
    types = [3 if i in specials else 1 for i in range(len(tokens))]  # 3 control, 1 normal
    for i in range(len(tokens), vocab_size):
        tokens.append(f"<pad_{i}>")
        types.append(1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_add_bos_token(True)
