#!/usr/bin/env python3
"""Makes the small models that check_logits.py runs through hoist and transformers.

    python3 bench/gpu/runtime/make_models.py OUTDIR [--seed N] [--device cpu|cuda] [--only NAME,...]
        [--quantize PATH/llama-quantize [--qtypes Q4_K_M,...] [--threads N]] [--no-gguf]

Every run draws FRESH random weights (the seed comes from the clock unless --seed is given and
is printed). Six architectures/shapes, each saved with save_pretrained (safetensors) in float32
and in bfloat16 (two also in float16), and two of them also as llama.cpp-style GGUF files in Q8_0
and Q4_0 (and, with --quantize, in the types llama.cpp's own llama-quantize makes):

  llama       LlamaForCausalLM, GQA 8/2, head_dim 64, hidden 512, 3 layers, untied, vocab 2048
  llama-tied  LlamaForCausalLM, MHA 2/2, head_dim 128, tied embeddings, vocab 1000
  llama31     LlamaForCausalLM, GQA 6/2, Llama 3.1 rope scaling (rope_type llama3)  [+ GGUF]
  mistral     MistralForCausalLM, GQA 8/2, head_dim 32, sliding window 40 (< the prompts)
  qwen2       Qwen2ForCausalLM, q/k/v biases, tied, vocab 1200
  qwen3       Qwen3ForCausalLM, q/k norms, head_dim 128 != hidden/heads, tied       [+ GGUF]

Weights: N(0, 1/fan_in) matrices, embeddings x8, norms 1 + N(0, 0.01), biases N(0, 0.01),
plus "peaks" (see add_peaks): for 80% of the tokens t a random successor pi(t) gets a logit
well clear of the rest, as in trained models; the other 20% leave the choice to the random,
context-dependent layers. Without peaks random logits are near-Gaussian and bf16 rounding
flips 2-7% of greedy choices (measured), so "greedy identical" would fail a correct runtime.

GGUF files (gguf-py, cases `<base>-q8_0`, `<base>-q4_0`) quantize every 2-D weight (token_embd
and output included) with gguf.quants.quantize and keep norms F32; the llama-arch file has
llama.cpp's q/k row permutation and `rope_freqs.weight`. Their reference is an HF directory of
the DEQUANTIZED, un-permuted weights (fp32), written beside them.

llama-quantize cases (--quantize PATH, cases `<base>-lq-<type>`, kind `gguf-<type>` lowercased,
e.g. llama31-lq-q4_k_m, kind gguf-q4_k_m): per GGUF base model a second fresh model whose row
widths are whole 256-value K-quant super-blocks (LQ_SHAPE: llama31 hidden 512, heads 8 / kv 2,
intermediate 1536; qwen3 intermediate 1280 -- llama-quantize would otherwise fall back to other
types for those tensors) is written once as an F32 GGUF with the same writer
(gguf/<base>-lq-f32.gguf; read back and checked bit-identical to the weights), then
`llama-quantize SRC DST TYPE THREADS` makes one file per --qtypes entry (default
Q4_K_M,Q5_K_M,Q6_K,Q3_K_M,Q2_K,Q4_1,Q5_0,Q5_1,IQ4_NL,Q4_0; no imatrix, --allow-requantize only
if it asks). Each file is READ BACK (gguf.GGUFReader): every tensor dequantized by its own ggml
type (the files mix types: Q4_K_M keeps some tensors in Q6_K, norms F32), q/k rows un-permuted
for the llama arch, names mapped back to HF; the reference HF directory holds those fp32
weights. The case records `tensor_types` ({ggml type: count} of the file) and llama-quantize's
fallback lines, if any, and `dequant_vs_llama_cpp`: gguf-py's dequantization against llama.cpp's
own (`llama-quantize --allow-requantize FILE TMP F32`), a WARNING when they differ. A type that llama-quantize (or the read-back) fails on is skipped with a
WARNING, listed in models.json's `llama_quantize.skipped`; the run goes on.

Every GGUF case also records `vs_original_fp32`: transformers on the reference vs on the
original fp32 weights over the selected prompts (rel = max|diff| / max|orig|, argmax agreement),
a sanity number for the quantization itself, not a criterion.

Prompts: for each case, three prompts (lengths 64, 77, 100) of random token ids are drawn and
kept only if greedy decoding is unambiguous on them: at every step of the 16-step fp32 greedy
path the top-1/top-2 logit gap must be >= 8x the row's rms difference between a low-precision
run of transformers (bf16 for bf16 cases, f16 for GGUF cases) and the fp32 run of the same
weights, and the low-precision greedy must equal the fp32 greedy (f32 cases: noise floor
1e-4 of the row's largest |logit|). The steps left to the random layers have near-ties by
nature; if no candidate in 64 qualifies, the best one is kept with a WARNING.

Writes OUTDIR/models.json: one entry per case with path, kind (hf-f32, hf-bf16, hf-f16,
gguf-q8_0, gguf-q4_0, gguf-<llama-quantize type>), made_by (GGUF: gguf-py or llama-quantize),
tensor_types (GGUF), the reference (an HF directory and the dtype to run it in), the prompts
and the selection numbers.
"""

import argparse
import copy
import gc
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import log, mr, np, torch  # noqa: E402

from transformers import (  # noqa: E402
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

STEPS = 16
PROMPT_LENGTHS = (64, 77, 100)
COMMON = dict(
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    bos_token_id=1,
    eos_token_id=2,
    hidden_act="silu",
)

SPECS = {
    "llama": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(vocab_size=2048, hidden_size=512, intermediate_size=1408, num_hidden_layers=3,
             num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             tie_word_embeddings=False, rope_theta=10000.0),
    ),
    "llama-tied": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(vocab_size=1000, hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, head_dim=128,
             tie_word_embeddings=True, rope_theta=10000.0),
    ),
    "llama31": (
        LlamaConfig,
        LlamaForCausalLM,
        dict(vocab_size=1536, hidden_size=384, intermediate_size=1024, num_hidden_layers=2,
             num_attention_heads=6, num_key_value_heads=2, head_dim=64,
             tie_word_embeddings=False, rope_theta=500000.0,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position_embeddings=64)),
    ),
    "mistral": (
        MistralConfig,
        MistralForCausalLM,
        dict(vocab_size=1000, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
             num_attention_heads=8, num_key_value_heads=2, head_dim=32,
             tie_word_embeddings=False, rope_theta=1e6, sliding_window=40),
    ),
    "qwen2": (
        Qwen2Config,
        Qwen2ForCausalLM,
        dict(vocab_size=1200, hidden_size=256, intermediate_size=1280, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2,
             tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False),
    ),
    "qwen3": (
        Qwen3Config,
        Qwen3ForCausalLM,
        dict(vocab_size=1100, hidden_size=256, intermediate_size=1152, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=128,
             tie_word_embeddings=True, rope_theta=1e6, use_sliding_window=False),
    ),
}
GGUF_OF = {"llama31": "llama", "qwen3": "qwen3"}  # base model -> GGUF architecture
F16_OF = {"llama", "qwen2"}  # base models also saved in float16 (the f16 GEMM path)

# llama-quantize cases (--quantize): the base model's config with these changes, so that every
# row width (hidden, heads * head_dim, intermediate) is a whole number of 256-value K-quant
# super-blocks; otherwise llama-quantize silently falls back to other types for those tensors.
# llama31: 384 / 384 / 1024 -> 512 / 512 / 1536; qwen3: 256 / 512 / 1152 -> 256 / 512 / 1280.
LQ_SHAPE = {
    "llama31": dict(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=2,
                    head_dim=64),
    "qwen3": dict(intermediate_size=1280),
}
DEFAULT_QTYPES = "Q4_K_M,Q5_K_M,Q6_K,Q3_K_M,Q2_K,Q4_1,Q5_0,Q5_1,IQ4_NL,Q4_0"


PEAK_FRACTION = 0.8  # tokens t whose successor pi(t) gets a clear logit peak
PEAK_STRENGTH = dict(untied=1.0, tied=2.0)


def build(name, peaks=True, overrides=None):
    """A freshly initialised fp32 model, widened (and peaked) so that greedy choices are clear.

    overrides: config entries replacing SPECS[name]'s (the llama-quantize shapes, LQ_SHAPE)."""
    config_cls, model_cls, extra = SPECS[name]
    config = config_cls(**COMMON, **{**extra, **(overrides or {})})
    config._attn_implementation = "eager"
    model = model_cls(config).float().eval()
    # Default init (std 0.02) gives near-uniform logits; widen it like make_reference.py:
    # weights ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), embeddings x8
    # (the residual stream carries the input token, the layers perturb it).
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1)
        model.get_input_embeddings().weight.mul_(8.0)
    if config.tie_word_embeddings:
        model.tie_weights()
    if peaks:
        add_peaks(model)
    return model


@torch.no_grad()
def add_peaks(model, frac=PEAK_FRACTION):
    """Gives most tokens t a clear successor pi(t) (a random permutation), as trained models
    have: random logits are near-Gaussian, so top-1/top-2 gaps of ~1% of their spread are
    common and bf16 rounding flips greedy choices in a few % of steps. For a random PEAK_FRACTION
    of the tokens the next-token logit of pi(t) stands well clear of the rest; for the others
    the choice is left to the (context-dependent) random layers.

    Untied: the embedding of t gets a component along lm_head row pi(t).
    Tied (lm_head = embeddings): layer 0's MLP looks the input token up (its first `vocab`
    gate/up rows are the embedding directions) and writes e_pi(t) - e_t (the echo of the input
    token removed), so intermediate_size must be >= vocab_size."""
    cfg = model.config
    V, d = cfg.vocab_size, cfg.hidden_size
    E = model.get_input_embeddings().weight
    perm = torch.randperm(V)
    chosen = (torch.rand(V) < frac).float()[:, None]
    if not cfg.tie_word_embeddings:
        W = model.lm_head.weight
        dirs = W[perm] / W[perm].norm(dim=1, keepdim=True)
        E.add_(chosen * PEAK_STRENGTH["untied"] * E.norm(dim=1, keepdim=True) * dirs)
        return
    mlp = model.model.layers[0].mlp
    inter = mlp.gate_proj.weight.shape[0]
    if inter < V:
        raise ValueError(f"{cfg.model_type}: tied peaks need intermediate_size >= vocab_size ({inter} < {V})")
    c = 6.0
    unit = E / E.norm(dim=1, keepdim=True)
    mlp.gate_proj.weight[:V] = c / d**0.5 * unit
    mlp.up_proj.weight[:V] = c / d**0.5 * unit
    scale = E.norm(dim=1).mean() / (torch.nn.functional.silu(torch.tensor(c)) * c)
    # -1.5 e_t: the lookup's activation is below its calibration (the MLP input is not exactly
    # e_t), so remove a bit more than the echo.
    cols = (chosen * PEAK_STRENGTH["tied"] * unit[perm] - 1.5 * unit) * scale
    mlp.down_proj.weight[:, :V] = cols.T
    if getattr(mlp.down_proj, "bias", None) is not None:
        mlp.down_proj.bias.zero_()


def save_hf(model, path, **kw):
    import inspect

    shutil.rmtree(path, ignore_errors=True)
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kw["safe_serialization"] = True
    model.save_pretrained(path, **kw)
    files = [f for f in os.listdir(path) if f.endswith(".safetensors")]
    if not files:
        raise RuntimeError(f"{path}: save_pretrained wrote no .safetensors file: {os.listdir(path)}")
    return files


def safetensors_dtypes(path):
    """The dtypes stored in a directory's safetensors files (header only)."""
    import json
    import struct

    dtypes = set()
    for f in os.listdir(path):
        if f.endswith(".safetensors"):
            with open(os.path.join(path, f), "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                header = json.loads(fh.read(n))
            dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return sorted(dtypes)


@torch.no_grad()
def greedy_cached(model, ids, steps):
    """Batched greedy decoding with transformers' KV cache (equal-length rows, no padding)."""
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    nxt = out.logits[:, -1].float().argmax(-1)
    toks = [nxt]
    for _ in range(steps - 1):
        out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1].float().argmax(-1)
        toks.append(nxt)
    return torch.stack(toks, 1)


@torch.no_grad()
def select_prompts(model32, twin, vocab, device, gen, label, batch=16, max_batches=4, need=8.0):
    """Prompts on which greedy decoding is unambiguous (see the module docstring).

    model32: fp32 model of the case's weights; twin: the same weights in low precision, or None.
    A prompt qualifies when, at each of the STEPS predicting rows of the fp32 greedy path, the
    top-1/top-2 gap >= need * the row's rms |twin - fp32| (f32 cases: 1e-4 * max|row|), the
    twin's argmax equals the fp32 greedy token, and the cached and uncached fp32 argmaxes agree.
    """
    chosen = []
    for length in PROMPT_LENGTHS:
        best = None
        tried = 0
        for _ in range(max_batches):
            cands = torch.randint(3, vocab, (batch, length), generator=gen).to(device)
            greedy = greedy_cached(model32, cands, STEPS)
            full = torch.cat([cands, greedy[:, :-1]], 1)
            rows = model32(input_ids=full).logits.float()[:, length - 1:]  # [B, S, V]
            tried += batch
            top2 = rows.topk(2, dim=-1)
            gap = top2.values[..., 0] - top2.values[..., 1]
            consistent = (top2.indices[..., 0] == greedy).all(-1)
            if twin is not None:
                low = twin(input_ids=full).logits.float()[:, length - 1:]
                noise = (low - rows).pow(2).mean(-1).sqrt()
                twin_same = (low.argmax(-1) == greedy).all(-1)
            else:
                noise = 1e-4 * rows.abs().amax(-1)
                twin_same = torch.ones_like(consistent)
            ratio = (gap / noise.clamp_min(1e-30)).amin(-1)
            varied = torch.tensor([len(set(g.tolist())) >= STEPS // 2 for g in greedy], device=ratio.device)
            ok = consistent & twin_same & (ratio >= need) & varied
            score = torch.where(consistent & twin_same, ratio, ratio - 1e9)
            i = int(score.argmax())
            if best is None or float(score[i]) > best[0]:
                best = (float(score[i]), cands[i].tolist(), greedy[i].tolist(), bool(twin_same[i]),
                        float(ratio[i]), False)
            if bool(ok.any()):
                i = int(ok.nonzero()[0])
                best = (float(ratio[i]), cands[i].tolist(), greedy[i].tolist(), True, float(ratio[i]), True)
                break
        score, prompt, greedy, twin_same, ratio, good = best
        if not good:
            log(f"  WARNING {label}: no prompt of length {length} with an unambiguous greedy path "
                f"in {tried} tries (best gap/noise {ratio:.2f}, low-precision greedy "
                f"{'equal' if twin_same else 'DIFFERENT'}); kept the best, greedy may flip by chance")
        distinct = len(set(greedy))
        echo = sum(g == p for g, p in zip(greedy, [prompt[-1]] + greedy[:-1]))
        if distinct <= 2 or echo > STEPS // 2:
            log(f"  WARNING {label}: degenerate greedy path {greedy} ({distinct} distinct, {echo} echoes)")
        chosen.append(dict(ids=prompt, greedy_fp32=greedy, min_gap_over_noise=round(ratio, 3),
                           low_precision_greedy_equal=twin_same, tried=tried, unambiguous=good))
    return chosen


def low_twin(model32, kind, device):
    """The same weights in the low precision hoist runs them with (a proxy for its rounding)."""
    if kind == "hf-f32":
        return None
    dtype = torch.bfloat16 if kind == "hf-bf16" else torch.float16
    try:
        twin = copy.deepcopy(model32).to(dtype)
        with torch.no_grad():
            twin(input_ids=torch.tensor([[3, 4, 5]], device=device))
        return twin
    except Exception as e:  # noqa: BLE001 (CPU builds without f16 kernels)
        log(f"  note: {dtype} twin failed ({e.__class__.__name__}: {e}); using bf16")
        return copy.deepcopy(model32).to(torch.bfloat16)


def write_gguf(model32, arch, qtype, path, name):
    """llama.cpp-style GGUF of model32; returns the dequantized, un-permuted HF state dict."""
    import gguf

    cfg = model32.config
    w = gguf.GGUFWriter(path, arch)
    common.gguf_header(w, cfg, common.llama_file_type(qtype), name)
    sd = {k: v.detach().float().cpu().numpy() for k, v in model32.state_dict().items()}
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    deq = {}
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    for hf_name, t in sd.items():
        g = common.gguf_tensor_name(hf_name)
        data = t
        permuted = arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight"))
        if permuted:
            data = mr.permute(t, n_q, n_kv if "k_proj" in hf_name else None)
        if data.ndim == 2:
            qd = gguf.quants.quantize(np.ascontiguousarray(data), qtype)
            w.add_tensor(g, qd, raw_dtype=qtype)
            back = gguf.quants.dequantize(qd, qtype).reshape(data.shape)
        else:
            w.add_tensor(g, np.ascontiguousarray(data, dtype=np.float32))
            back = data
        if permuted:
            back = common.unpermute(back, n_q if "q_proj" in hf_name else n_kv)
        deq[hf_name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    if arch == "llama" and common.is_llama3_rope(cfg):
        w.add_tensor("rope_freqs.weight", mr.llama3_rope_factors(cfg))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


def hf_weight_names(model):
    """The HF tensor names a GGUF file of `model` holds (the tied lm_head excluded)."""
    names = list(model.state_dict())
    if model.config.tie_word_embeddings:
        names = [n for n in names if n != "lm_head.weight"]
    return names


def read_gguf_weights(path, model, arch):
    """Every tensor of the GGUF file at path, dequantized to fp32 (gguf.quants.dequantize, one
    ggml type per tensor: llama-quantize mixes them), q/k rows un-permuted for the llama arch as
    write_gguf's reference does, under its HF name. Returns (HF state dict, {ggml type: count}).
    `rope_freqs.weight` (llama arch, Llama 3.1 rope) must hold make_reference's factors."""
    import collections

    import gguf

    cfg = model.config
    names = hf_weight_names(model)
    to_hf = {common.gguf_tensor_name(n): n for n in names}
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    counts = collections.Counter()
    sd = {}
    for t in gguf.GGUFReader(path).tensors:
        counts[t.tensor_type.name] += 1
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # ggml ne order -> numpy
        back = np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)  # a copy
        if t.name == "rope_freqs.weight":
            want = mr.llama3_rope_factors(cfg)
            if arch != "llama" or not np.array_equal(back, want):
                raise RuntimeError(f"{path}: rope_freqs.weight ({t.tensor_type.name}) differs from the factors written")
            continue
        hf = to_hf.get(t.name)
        if hf is None:
            raise RuntimeError(f"{path}: tensor {t.name} ({t.tensor_type.name}) has no HF counterpart")
        if arch == "llama" and hf.endswith(("q_proj.weight", "k_proj.weight")):
            back = common.unpermute(back, n_q if "q_proj" in hf else n_kv)
        want_shape = tuple(model.state_dict()[hf].shape)
        if back.shape != want_shape:
            raise RuntimeError(f"{path}: {t.name} has shape {back.shape}, {hf} is {want_shape}")
        sd[hf] = torch.from_numpy(np.ascontiguousarray(back))
    missing = [n for n in names if n not in sd]
    if missing:
        raise RuntimeError(f"{path}: no tensor for {missing}")
    return sd, dict(counts.most_common())


def llama_cpp_dequant_check(binary, gpath, deq, model, arch, threads):
    """Cross-checks gguf-py's dequantization with llama.cpp's own: `llama-quantize
    --allow-requantize FILE TMP F32` writes every tensor dequantized by ggml (F32 tensors copied),
    read back the same way as the reference. Returns dict(max_abs, rel = max_abs / max|w|,
    identical tensors, tensors); the temporary F32 file is removed."""
    tmp = gpath + ".llama-cpp-f32.gguf"
    try:
        llama_quantize(binary, gpath, tmp, "F32", threads, requantize=True)
        theirs, _ = read_gguf_weights(tmp, model, arch)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    max_abs, scale, same = 0.0, 0.0, 0
    for n, t in deq.items():
        d = float((theirs[n] - t).abs().max())
        max_abs = max(max_abs, d)
        scale = max(scale, float(t.abs().max()))
        same += d == 0.0
    return dict(max_abs=max_abs, rel=max_abs / max(scale, 1e-30), identical=same, tensors=len(deq))


def llama_quantize(binary, src, dst, qtype, threads, timeout=300, requantize=False):
    """`llama-quantize SRC DST TYPE THREADS` into dst (written aside, renamed when complete).

    Returns dict(argv, seconds, fallbacks: llama-quantize's lines about tensors it could not
    give the type asked for) or raises RuntimeError. The source is F32, so --allow-requantize is
    only added (and the run repeated) if llama-quantize asks for it."""
    tmp = dst + ".tmp"
    argv = [binary] + (["--allow-requantize"] if requantize else []) + [src, tmp, qtype, str(threads)]
    r = common.run_cmd(argv, timeout)
    text = r["stdout"] + r["stderr"]
    if r["rc"] != 0 and "requantiz" in text.lower() and not requantize:
        argv = [binary, "--allow-requantize", src, tmp, qtype, str(threads)]
        r = common.run_cmd(argv, timeout)
        text = r["stdout"] + r["stderr"]
    if r["rc"] != 0 or not os.path.exists(tmp):
        if os.path.exists(tmp):
            os.remove(tmp)
        why = "timed out" if r["timed_out"] else f"exit {r['rc']}"
        raise RuntimeError(f"llama-quantize {qtype}: {why}{common.tail(text, 6)}")
    os.replace(tmp, dst)
    # One line per tensor ("... not divisible by 256 (required for type q4_K) -> falling back to
    # q5_0"), then a count line, which is left out.
    fallbacks = [line.strip() for line in text.splitlines()
                 if ("not divisible" in line or "fall" in line.lower()) and "tensor(s)" not in line]
    return dict(argv=argv, seconds=round(r["seconds"], 3), fallbacks=fallbacks)


@torch.no_grad()
def vs_original(ref32, orig32, prompts, device):
    """How far the dequantized reference is from the original fp32 weights, over the selected
    prompts (teacher-forced: prompt + greedy[:-1]): rel = max|ref - orig| / max|orig|, and the
    share of positions where the two argmaxes agree (a sanity number, not a criterion)."""
    rel, agree, total = 0.0, 0, 0
    for p in prompts:
        x = torch.tensor([p["ids"] + p["greedy_fp32"][:-1]], device=device)
        a = ref32(input_ids=x).logits.float()[0]
        b = orig32(input_ids=x).logits.float()[0]
        rel = max(rel, float((a - b).abs().max() / b.abs().max()))
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += a.shape[0]
    return dict(rel=round(rel, 6), argmax_agree=agree, positions=total)


def gguf_case(base, arch, name, kind, gpath, deq, orig32, vocab, device, gen, outdir, how, **extra):
    """A GGUF case: the reference HF directory of the dequantized weights `deq` (fp32), prompts
    selected on it (f16 twin), and the distance to the original fp32 weights."""
    mq = build(base, peaks=False, overrides=extra.pop("overrides", None))  # same config; weights below
    missing, unexpected = mq.load_state_dict(deq, strict=False)
    if unexpected or any("lm_head" not in k for k in missing):
        raise RuntimeError(f"{name}: dequantized weights do not fit: missing {missing}, unexpected {unexpected}")
    if mq.config.tie_word_embeddings:
        mq.tie_weights()
    summary = model_summary(mq.config)
    if "tensor_types" not in extra:
        import collections

        import gguf

        counts = collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(gpath).tensors)
        extra["tensor_types"] = dict(counts.most_common())
    ref_dir = os.path.join(outdir, "ref", name)
    save_hf(mq, ref_dir)
    w32 = mq.to(device).eval()
    twin = low_twin(w32, kind, device)
    prompts = select_prompts(w32, twin, vocab, device, gen, name)
    del twin
    orig = copy.deepcopy(orig32).to(device).eval()
    near = vs_original(w32, orig, prompts, device)
    del w32, orig, mq
    case = dict(
        name=name, kind=kind, arch=base, gguf_arch=arch, path=os.path.relpath(gpath, outdir),
        ref=dict(hf_dir=os.path.relpath(ref_dir, outdir), dtype="float32", how=how),
        config=summary, steps=STEPS, prompts=prompts, vs_original_fp32=near, **extra,
    )
    cross = extra.get("dequant_vs_llama_cpp")
    log(f"{name}: {os.path.getsize(gpath)} bytes, arch {arch}, "
        f"gap/noise {[p['min_gap_over_noise'] for p in prompts]}, vs original fp32: rel {near['rel']:.2e}, "
        f"argmax {near['argmax_agree']}/{near['positions']}, tensor types {extra['tensor_types']}"
        + (f", dequant vs llama.cpp: max abs {cross['max_abs']:.1e}, {cross['identical']}/{cross['tensors']} "
           "tensors identical" if cross and "error" not in cross else ""))
    return case


def lq_cases(base, arch, binary, qtypes, threads, device, gen, outdir, skipped):
    """The llama-quantize cases of one base model (see the module docstring); a type that
    llama-quantize or the read-back fails on is skipped with a WARNING (and listed in skipped)."""
    over = LQ_SHAPE.get(base)
    m32 = build(base, overrides=over)
    vocab = m32.config.vocab_size
    src = os.path.join(outdir, "gguf", f"{base}-lq-f32.gguf")
    os.makedirs(os.path.dirname(src), exist_ok=True)
    import gguf

    write_gguf(m32, arch, gguf.GGMLQuantizationType.F32, src, f"{base}-lq-f32")
    # The read-back path on the F32 source must give the original weights bit for bit (names,
    # shapes, q/k un-permutation).
    back, types = read_gguf_weights(src, m32, arch)
    sd = m32.state_dict()
    bad = [n for n, t in back.items() if not torch.equal(t, sd[n].float())]
    if bad:
        raise RuntimeError(f"{src}: read back differs from the written weights: {bad}")
    log(f"{base}-lq: F32 source {src} ({os.path.getsize(src)} bytes, {types}), read back exactly; "
        f"shape {model_summary(m32.config)}")
    del back, sd
    cases = []
    for qtype in qtypes:
        q = qtype.lower()
        name = f"{base}-lq-{q}"
        gpath = os.path.join(outdir, "gguf", f"{name}.gguf")
        try:
            run = llama_quantize(binary, src, gpath, qtype, threads)
            deq, types = read_gguf_weights(gpath, m32, arch)
        except Exception as e:  # noqa: BLE001
            log(f"  WARNING {name}: skipped: {e.__class__.__name__}: {e}")
            skipped.append(dict(name=name, type=qtype, error=f"{e.__class__.__name__}: {e}"))
            continue
        if run["fallbacks"]:
            log(f"  note {name}: llama-quantize fell back for {len(run['fallbacks'])} tensors: {run['fallbacks'][:3]}")
        try:
            cross = llama_cpp_dequant_check(binary, gpath, deq, m32, arch, threads)
        except Exception as e:  # noqa: BLE001
            cross = dict(error=f"{e.__class__.__name__}: {e}")
        if "error" in cross or cross["rel"] > 1e-6:
            log(f"  WARNING {name}: gguf-py's dequantization differs from llama.cpp's: {cross}")
        cases.append(gguf_case(
            base, arch, name, f"gguf-{q}", gpath, deq, m32, vocab, device, gen, outdir,
            how=f"transformers fp32 with the weights of llama-quantize's {qtype} file read back "
                "(gguf.GGUFReader, gguf.quants.dequantize per tensor type"
                + (", q/k rows un-permuted)" if arch == "llama" else ")"),
            overrides=over, made_by="llama-quantize", llama_quantize_type=qtype,
            tensor_types=types, llama_quantize=dict(seconds=run["seconds"], fallbacks=run["fallbacks"],
                                                    argv=[os.path.basename(a) for a in run["argv"]]),
            dequant_vs_llama_cpp=cross,
        ))
        del deq
        gc.collect()
    del m32
    return cases


def model_summary(cfg):
    keys = ["model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
            "sliding_window", "max_position_embeddings"]
    s = {k: getattr(cfg, k, None) for k in keys}
    s["rope_theta"] = common.rope_theta(cfg)
    s["rope_type"] = common.rope_params(cfg).get("rope_type", "default")
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--only", default=None, help="comma-separated base names (default: all)")
    ap.add_argument("--no-gguf", action="store_true", help="no GGUF cases at all (--quantize ignored)")
    ap.add_argument("--quantize", default=None, metavar="PATH",
                    help="llama.cpp's llama-quantize: adds the <base>-lq-<type> cases (default: none)")
    ap.add_argument("--qtypes", default=DEFAULT_QTYPES,
                    help=f"llama-quantize types for --quantize, comma-separated (default {DEFAULT_QTYPES})")
    ap.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 8), help="llama-quantize threads")
    args = ap.parse_args()
    qtypes = [t.strip().upper() for t in args.qtypes.split(",") if t.strip()]
    if args.quantize:
        args.quantize = os.path.abspath(args.quantize)
        if not (os.path.isfile(args.quantize) and os.access(args.quantize, os.X_OK)):
            sys.exit(f"--quantize {args.quantize}: not an executable file")

    t0 = time.time()
    seed = args.seed if args.seed is not None else time.time_ns() % (2**31 - 1)
    device = common.pick_device(args.device)
    common.strict_fp32()
    log(f"make_models: seed {seed}, device {device}, {common.versions()}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1)

    outdir = os.path.abspath(args.outdir)
    os.makedirs(outdir, exist_ok=True)
    names = args.only.split(",") if args.only else list(SPECS)
    for n in names:
        if n not in SPECS:
            sys.exit(f"unknown model {n!r}; known: {', '.join(SPECS)}")

    cases = []
    skipped = []  # llama-quantize types that failed
    for base in names:
        m32 = build(base)
        vocab = m32.config.vocab_size
        summary = model_summary(m32.config)
        variants = [("hf-f32", m32)]
        mb = copy.deepcopy(m32).to(torch.bfloat16)
        variants.append(("hf-bf16", mb))
        if base in F16_OF:
            variants.append(("hf-f16", copy.deepcopy(m32).to(torch.float16)))
        for kind, model in variants:
            tag = kind[len("hf-"):]
            name = f"{base}-{tag}"
            path = os.path.join(outdir, "hf", name)
            save_hf(model, path)
            stored = safetensors_dtypes(path)
            want = {"hf-f32": "F32", "hf-bf16": "BF16", "hf-f16": "F16"}[kind]
            if stored != [want]:
                raise RuntimeError(f"{path}: stored dtypes {stored}, expected only {want}")
            ref_dtype = {"hf-f32": "float32", "hf-bf16": "bfloat16", "hf-f16": "float16"}[kind]
            # The selection runs the case's exact weights in fp32 (the upcast is exact).
            w32 = copy.deepcopy(model).float().to(device).eval()
            twin = low_twin(w32, kind, device)
            prompts = select_prompts(w32, twin, vocab, device, gen, name)
            del w32, twin
            cases.append(dict(
                name=name, kind=kind, arch=base, path=os.path.relpath(path, outdir),
                ref=dict(hf_dir=os.path.relpath(path, outdir), dtype=ref_dtype,
                         how=f"transformers {ref_dtype} forward of the same directory"),
                config=summary, steps=STEPS, prompts=prompts,
            ))
            log(f"{name}: {kind}, stored {stored}, prompts {[len(p['ids']) for p in prompts]}, "
                f"gap/noise {[p['min_gap_over_noise'] for p in prompts]}, fp32 greedy[0] {prompts[0]['greedy_fp32']}")
        del mb, variants
        if base in GGUF_OF and not args.no_gguf:
            import gguf

            arch = GGUF_OF[base]
            for qtype in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
                q = qtype.name.lower()
                name = f"{base}-{q}"
                gpath = os.path.join(outdir, "gguf", f"{name}.gguf")
                os.makedirs(os.path.dirname(gpath), exist_ok=True)
                deq = write_gguf(m32, arch, qtype, gpath, name)
                cases.append(gguf_case(
                    base, arch, name, f"gguf-{q}", gpath, deq, m32, vocab, device, gen, outdir,
                    how="transformers fp32 with the GGUF's dequantized weights "
                        "(gguf.quants.dequantize, q/k rows un-permuted)",
                    made_by="gguf-py",
                ))
                del deq
            if args.quantize:
                cases += lq_cases(base, arch, args.quantize, qtypes, args.threads, device, gen, outdir, skipped)
        del m32
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()

    manifest = dict(seed=seed, steps=STEPS, made_with=common.versions(), cases=cases)
    if args.quantize and not args.no_gguf:
        manifest["llama_quantize"] = dict(binary=args.quantize, types=qtypes, skipped=skipped)
    common.write_json(os.path.join(outdir, "models.json"), manifest)
    ambiguous = sum(not p["unambiguous"] for c in cases for p in c["prompts"])
    log(f"make_models: {len(cases)} cases in {outdir}/models.json, {ambiguous} ambiguous prompts, "
        f"{time.time() - t0:.1f} s"
        + (f"; WARNING: llama-quantize types skipped: {[s_['name'] for s_ in skipped]}" if skipped else ""))


if __name__ == "__main__":
    main()
