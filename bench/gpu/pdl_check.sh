#!/usr/bin/env bash
# Decode speed on a synthetic Llama-2-7B-shaped checkpoint (random bytes: speed only) with and
# without programmatic dependent launch (HOIST_NO_PDL=1), twice with it. Carries:
# .carry/bin/{gpu_speed,make_checkpoint}. Run from the repository root on the GPU machine.
export LD_LIBRARY_PATH=/usr/local/cuda-13.0/targets/x86_64-linux/lib HOIST_KERNEL_CACHE=/var/tmp/hoist-kernels
D=/var/tmp/l7; .carry/bin/make_checkpoint llama-7b $D > /dev/null || exit 1
cat > $D/config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
 "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false,
 "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16"}
JSON
for e in "A=1" "HOIST_NO_PDL=1" "A=2"; do echo "== $e"; env $e timeout 120 .carry/bin/gpu_speed $D 512 128 2>&1 | grep -E "decode_tokens_per_s|decode_fraction|prefill_fraction"; done
