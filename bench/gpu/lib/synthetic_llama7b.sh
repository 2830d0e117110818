#!/usr/bin/env bash
# Makes (or reuses) a Llama-2-7B-shaped synthetic checkpoint with its config.json in DIR
# (default $HOIST_DATA/l7) and prints the directory. Random bytes: for speed measurements only.
# Needs $HOIST_BIN/make_checkpoint (default .carry/bin).
source "$(dirname "$0")/env.sh"
D=${1:-$HOIST_DATA/l7}
"$HOIST_BIN/make_checkpoint" llama-7b "$D" > /dev/null || exit 1
cat > "$D/config.json" <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
 "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
JSON
echo "$D"
