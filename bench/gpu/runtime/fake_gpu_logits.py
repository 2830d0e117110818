#!/usr/bin/env python3
"""A stand-in for `gpu_logits` (dry runs of check_logits.py without a GPU or hoist).

    python3 bench/gpu/runtime/fake_gpu_logits.py MODEL --prompts P.json --steps N --out DIR

Writes what gpu_logits writes (DIR/result.json: vocab, per prompt n, greedy, device_greedy,
file; DIR/p<i>.f32: [n + N - 1, vocab] little-endian f32), computed by transformers in fp32 on
the case's REFERENCE directory: MODEL (a path in make_models.py's OUTDIR) is looked up in the
models.json of the nearest directory above it that has one. check_logits.py then compares the
reference with itself (bf16/f16 cases: fp32 against their low-precision reference), so this
checks the harness and the manifest (kinds, paths, vocab, prompt bookkeeping), not hoist.
FAKE_NOISE=x adds x * max|logit| uniform noise (to see a failure).
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
from common import np, torch  # noqa: E402


def find_case(model):
    d = os.path.dirname(os.path.abspath(model))
    while True:
        man = os.path.join(d, "models.json")
        if os.path.exists(man):
            with open(man) as f:
                cases = json.load(f)["cases"]
            for c in cases:
                if os.path.abspath(os.path.join(d, c["path"])) == os.path.abspath(model):
                    return d, c
            sys.exit(f"fake_gpu_logits: {model} is no case of {man}")
        if os.path.dirname(d) == d:
            sys.exit(f"fake_gpu_logits: no models.json above {model}")
        d = os.path.dirname(d)


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM

    outdir, case = find_case(a.model)
    common.strict_fp32()
    ref = os.path.join(outdir, case["ref"]["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch.float32, attn_implementation="eager").eval()
    vocab = model.config.vocab_size
    noise = float(os.environ.get("FAKE_NOISE", "0"))
    rng = np.random.default_rng(0)
    with open(a.prompts) as f:
        prompts = json.load(f)
    res = []
    for i, ids in enumerate(prompts):
        seq = list(ids)
        for _ in range(a.steps):
            logits = model(input_ids=torch.tensor([seq]), use_cache=False).logits[0].float().numpy()
            seq.append(int(logits[-1].argmax()))
        greedy = seq[len(ids):]
        rows = logits[: len(ids) + a.steps - 1].astype("<f4")
        if noise:
            rows = rows + (noise * np.abs(rows).max() * rng.uniform(-1, 1, rows.shape)).astype("<f4")
        rows.tofile(os.path.join(a.out, f"p{i}.f32"))
        res.append(dict(n=len(ids), greedy=greedy, device_greedy=greedy, file=f"p{i}.f32"))
    with open(os.path.join(a.out, "result.json"), "w") as f:
        json.dump(dict(vocab=vocab, prompts=res, load_seconds=0.0, fake=True), f)


if __name__ == "__main__":
    main()
