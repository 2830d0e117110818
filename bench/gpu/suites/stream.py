#!/usr/bin/env python3
"""The Python of suite `stream` (bench/gpu/suites/stream.sh): hoist's layer streaming against
llama.cpp's partial offload (`llama-bench -ngl N`) on the same GGUF with the same GPU weight bytes.

    stream.py plan FILE --shape NAME --json OUT [--ngl "24 16 3"] [--gpu-memory BYTES]
              [--host-ngl N] [--slack BYTES]
        Reads FILE's tensor table (gguf.GGUFReader): each layer's matrix bytes (`blk.N.*` with two
        dimensions) and the fixed bytes (everything else), as hoist's planner counts them. For
        each N of --ngl: hoist's --gpu-memory = fixed + the first N layers' matrices + slack
        (hoist keeps N-2 layers resident and streams the rest through 2 slots of one layer
        each), against `llama-bench -ngl N`; plus the all-resident reference (N = layers + 1:
        hoist without --gpu-memory, llama-bench -ngl 99). With --gpu-memory instead: the largest
        N that budget holds. --host-ngl adds the host-budget run's N. Writes the plan to OUT and
        prints one line per run for the shell: `ROW LABEL NGL GPU_MEMORY|-` and
        `HOST LABEL NGL GPU_MEMORY HOST_MEMORY` (the host budget predicted from the plan).
    stream.py host-budget PLAN_JSON [RUN_JSON]
        Half of the streamed layers' bytes of the host-budget row's N: from hoist's own placement
        in RUN_JSON (the same N without a host budget) where it has one, else the plan's.
    stream.py timev REPORT CMD [ARGS...]
        Runs CMD and writes GNU `time -v`'s lines that the summary reads (peak RSS from wait4's
        rusage) to REPORT; exits with CMD's status. For machines without /usr/bin/time.
    stream.py brief hoist|llama RUN_JSON
        One line of a run's figures, for the log.
    stream.py summary OUTDIR [--gen N] [--page-cache warm|cold]
        OUTDIR/summary.md (one table per shape, a row per N) and summary.json from the plans,
        OUTDIR/runs.tsv (one line per run: its exit status) and the raw files it names. A missing
        field prints as n/a. Exit status 1 when a run failed or was skipped, or the host-budget
        run's peak RSS passed its budget + 512 MiB; the speed targets never change it.

Targets of a streamed row (the all-resident row is the reference, without targets): decode >=
0.90 of its streaming bound, prefill >= 0.85 of its bound, decode >= 1.5x llama.cpp, prefill >=
5x llama.cpp (each prompt length).
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time

MIB = 1 << 20
GIB = 1 << 30
RSS_SLACK = 512 * MIB
TARGETS = dict(decode_bound=0.90, prefill_bound=0.85, decode_x_llama=1.5, prefill_x_llama=5.0)


# ---------------------------------------------------------------- plan

def tensor_table(path):
    """(fixed bytes, [matrix bytes of layer l], [all bytes of layer l], {name: bytes} of the rest)."""
    import gguf

    r = gguf.GGUFReader(path)
    layers, layers_all, rest = {}, {}, {}
    for t in r.tensors:
        n = int(t.n_bytes)
        m = re.match(r"blk\.(\d+)\.", t.name)
        if m:
            i = int(m.group(1))
            layers_all[i] = layers_all.get(i, 0) + n
            if len(t.shape) == 2:
                layers[i] = layers.get(i, 0) + n
                continue
        rest[t.name] = n
    count = max(layers_all) + 1 if layers_all else 0
    mats = [layers.get(i, 0) for i in range(count)]
    alls = [layers_all.get(i, 0) for i in range(count)]
    return sum(rest.values()), mats, alls, rest


def llama_gpu_bytes(ngl, alls, rest):
    """Weight bytes `llama-bench -ngl ngl` puts on the GPU: the last ngl layers (all their
    tensors); output.weight and output_norm only when ngl > layers; token_embd never."""
    n = len(alls)
    b = sum(alls[max(n - ngl, 0):])
    if ngl > n:
        b += sum(v for k, v in rest.items() if k.startswith("output"))
    return b


def plan_row(label, ngl, fixed, mats, alls, rest, slack):
    n = len(mats)
    if ngl > n:  # everything resident (N = layers: the budget holds them all, so hoist streams none either)
        return dict(label=label, ngl=n + 1, llama_ngl=99, gpu_memory=None, expected_resident=n,
                    expected_streamed=0, llama_gpu_bytes=llama_gpu_bytes(99, alls, rest),
                    hoist_gpu_weight_bytes=fixed + sum(mats))
    budget = fixed + sum(mats[:ngl]) + slack
    resident = n if ngl == n else max(ngl - 2, 0)
    return dict(label=label, ngl=ngl, llama_ngl=ngl, gpu_memory=budget, expected_resident=resident,
                expected_streamed=n - resident, llama_gpu_bytes=llama_gpu_bytes(ngl, alls, rest),
                hoist_gpu_weight_bytes=budget - slack)


def cmd_plan(a):
    fixed, mats, alls, rest = tensor_table(a.file)
    n = len(mats)
    if n == 0:
        raise SystemExit(f"plan: {a.file} has no blk.N tensors")
    rows, notes = [], []
    if a.gpu_memory is not None:
        ngl = max((k for k in range(n + 1) if fixed + sum(mats[:k]) + a.slack <= a.gpu_memory), default=0)
        if ngl < 2:
            raise SystemExit(f"plan: --gpu-memory {a.gpu_memory} holds fewer than the 2 layers of the slots")
        label = f"gpu{a.gpu_memory >> 30}g" if a.gpu_memory % GIB == 0 else f"gpu{a.gpu_memory}"
        row = plan_row(label, ngl, fixed, mats, alls, rest, a.slack)
        row["gpu_memory"] = a.gpu_memory  # the budget as given, not rounded down to whole layers
        rows.append(row)
    else:
        rows.append(plan_row("resident", n + 1, fixed, mats, alls, rest, a.slack))
        for ngl in [int(x) for x in a.ngl.split()]:
            if ngl < 2 or ngl > n:
                notes.append(f"N={ngl} skipped: hoist needs 2 <= N <= {n} (2 slots; N > {n} is the resident row)")
                continue
            rows.append(plan_row(f"ngl{ngl}", ngl, fixed, mats, alls, rest, a.slack))
    host = None
    if a.host_ngl and 2 <= a.host_ngl <= n and a.gpu_memory is None:
        host = plan_row(f"host{a.host_ngl}", a.host_ngl, fixed, mats, alls, rest, a.slack)
        streamed = sum(mats[host["expected_resident"]:])
        host.update(streamed_bytes=streamed, host_memory_predicted=streamed // 2)
    elif a.host_ngl:
        notes.append(f"host-budget run skipped: N={a.host_ngl} is outside 2..{n}")
    plan = dict(shape=a.shape, file=os.path.abspath(a.file), file_bytes=os.path.getsize(a.file), layers=n,
                fixed_bytes=fixed, layer_bytes=mats, layer_all_bytes=alls, rest_bytes=rest, slack=a.slack,
                rows=rows, host=host, notes=notes)
    with open(a.json, "w") as f:
        json.dump(plan, f, indent=1)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    for r in rows:
        print(f"ROW {r['label']} {r['llama_ngl']} {r['gpu_memory'] if r['gpu_memory'] is not None else '-'}")
    if host:
        print(f"HOST {host['label']} {host['ngl']} {host['gpu_memory']} {host['host_memory_predicted']}")


def cmd_host_budget(a):
    plan = json.load(open(a.plan))
    host = plan["host"]
    doc = load_json(a.run) if a.run else None
    pl = placement(doc)
    if pl and isinstance(pl.get("layers"), list) and isinstance(pl.get("layer_bytes"), list):
        streamed = sum(b for p, b in zip(pl["layers"], pl["layer_bytes"]) if p != "resident")
        if streamed > 0:
            print(streamed // 2)
            return
    print(host["host_memory_predicted"])


# ---------------------------------------------------------------- timev

def cmd_timev(a):
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        raise SystemExit("timev: no command")
    t = time.monotonic()
    try:
        p = subprocess.Popen(argv)
    except OSError as e:
        with open(a.report, "w") as f:
            f.write(f"\tCommand being timed: \"{' '.join(argv)}\"\n\tcould not start: {e}\n")
        sys.exit(127)
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = 0  # reaped here; keeps Popen from waiting again
    secs = time.monotonic() - t
    rc = os.waitstatus_to_exitcode(status)
    rc = 128 - rc if rc < 0 else rc
    with open(a.report, "w") as f:
        if rc:
            f.write(f"Command exited with non-zero status {rc}\n")
        f.write(f"\tCommand being timed: \"{' '.join(argv)}\"\n")
        f.write(f"\tUser time (seconds): {ru.ru_utime:.2f}\n\tSystem time (seconds): {ru.ru_stime:.2f}\n")
        f.write(f"\tElapsed (wall clock) time (h:mm:ss or m:ss): {int(secs // 60)}:{secs % 60:05.2f}\n")
        f.write(f"\tMaximum resident set size (kbytes): {ru.ru_maxrss}\n")
        f.write(f"\tExit status: {rc}\n")
    sys.exit(rc)


# ---------------------------------------------------------------- brief

def cmd_brief(a):
    """One line of a run's figures for the log (the summary has them all)."""
    doc = load_json(a.file)
    if a.kind == "hoist":
        if not isinstance(doc, dict):
            print("  hoist: no JSON")
            return
        s = doc.get("streaming") if isinstance(doc.get("streaming"), dict) else {}
        pl = placement(doc) or {}
        print(f"  hoist: decode {fmt(doc.get('decode_tokens_per_s'))} tok/s (bound {fmt(s.get('decode_bound_tokens_per_s', doc.get('decode_bound_tokens_per_s')))}), "
              f"prefill {fmt(doc.get('prefill_tokens_per_s'), 0)} tok/s (bound {fmt(s.get('prefill_bound_tokens_per_s'), 0)}); "
              f"resident {s.get('resident_layers', 'all')}, pinned {s.get('pinned_layers', 0)}, file {s.get('file_layers', 0)}; "
              f"GPU {gb(pl.get('gpu_bytes'))} of {gb(pl.get('gpu_budget_bytes'))} GB, host {gb(pl.get('host_bytes'))} of "
              f"{gb(pl.get('host_budget_bytes'))} GB; peak RSS {gib(peak_rss_bytes(a.file[:-5] + '.time'))} GiB")
    else:
        if not isinstance(doc, list):
            print("  llama-bench: no JSON")
            return
        print("  llama-bench: " + ", ".join(
            f"{'pp' + str(r.get('n_prompt')) if r.get('n_prompt') else 'tg' + str(r.get('n_gen'))} {fmt(r.get('avg_ts'))} tok/s"
            for r in doc if isinstance(r, dict)))


# ---------------------------------------------------------------- summary

def load_json(path):
    """The last JSON value on its own lines of a file (hoist and llama-bench may print others);
    None when the file is missing or holds none."""
    try:
        text = open(path).read()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    dec, found = json.JSONDecoder(), None
    for i, ch in enumerate(text):
        if ch in "[{" and (i == 0 or text[i - 1] == "\n"):
            try:
                found, _ = dec.raw_decode(text, i)
            except ValueError:
                continue
    return found


def peak_rss_bytes(path):
    try:
        m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", open(path).read())
    except OSError:
        return None
    return int(m.group(1)) * 1024 if m else None


def num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and x == x else None


def get(d, *keys):
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def placement(doc):
    pl = get(doc, "load", "placement")
    return pl if isinstance(pl, dict) else None


def count(x):
    return len(x) if isinstance(x, list) else num(x)


def ratio(a, b):
    a, b = num(a), num(b)
    return a / b if a is not None and b else None


def fmt(x, digits=1, suffix=""):
    x = num(x)
    return "n/a" if x is None else f"{x:.{digits}f}{suffix}"


def gb(x):
    return fmt(num(x) / 1e9 if num(x) is not None else None, 2)


def val(x):
    return "n/a" if x is None else str(x)


def ms(x):
    return fmt(num(x) * 1e3 if num(x) is not None else None, 1)


def gib(x):
    return fmt(num(x) / GIB if num(x) is not None else None, 2)


def read_manifest(path):
    runs = []
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return runs
    if not lines:
        return runs
    head = lines[0].split("\t")
    for line in lines[1:]:
        cells = line.split("\t")
        runs.append(dict(zip(head, cells + [""] * (len(head) - len(cells)))))
    return runs


def hoist_run(run):
    """One hoist run's figures (None where its JSON lacks them)."""
    doc = load_json(run["stem"] + ".json") if run.get("rc") == "0" else None
    doc = doc if isinstance(doc, dict) else None
    s = get(doc, "streaming")
    s = s if isinstance(s, dict) else None
    pl = placement(doc)
    out = dict(rc=run.get("rc"), note=run.get("note") or "", prompt=int(run["prompts"]), doc=doc is not None,
               peak_rss=peak_rss_bytes(run["stem"] + ".time"), streaming=s is not None)
    out["decode"] = num(get(doc, "decode_tokens_per_s"))
    out["prefill"] = num(get(doc, "prefill_tokens_per_s"))
    if s is not None:
        out["decode_bound"] = num(s.get("decode_bound_tokens_per_s"))
        out["decode_fraction"] = num(s.get("decode_fraction_of_bound")) or ratio(out["decode"], out["decode_bound"])
        out["prefill_bound"] = num(s.get("prefill_bound_tokens_per_s"))
        out["prefill_fraction"] = num(s.get("prefill_fraction_of_bound")) or ratio(out["prefill"], out["prefill_bound"])
        for k in ("resident_layers", "pinned_layers", "file_layers", "slots", "streamed_bytes_per_token",
                  "h2d_gbps", "file_gbps", "decode_compute_seconds", "prefill_compute_seconds"):
            out[k] = s.get(k)
    elif doc is not None:  # all resident: the memory bound of the resident model
        out["decode_bound"] = num(get(doc, "decode_bound_tokens_per_s"))
        out["decode_fraction"] = num(get(doc, "decode_fraction_of_bound")) or ratio(out["decode"], out["decode_bound"])
        out["prefill_bound"] = None
        out["prefill_fraction"] = None
    if pl is not None:
        layers = pl.get("layers") if isinstance(pl.get("layers"), list) else []
        out["placement"] = {k: pl.get(k) for k in ("slots", "slot_bytes", "gpu_bytes", "gpu_budget_bytes",
                                                   "host_bytes", "host_budget_bytes", "streamed_bytes_per_step",
                                                   "file_bytes_per_step", "fixed_bytes")}
        out["placement"]["resident"] = sum(1 for x in layers if x == "resident")
        out["placement"]["pinned"] = sum(1 for x in layers if isinstance(x, dict) and x.get("streamed") == "pinned")
        out["placement"]["file"] = sum(1 for x in layers if isinstance(x, dict) and x.get("streamed") == "file")
    if doc is None:
        out["error"] = run_error(run)
    return out


def run_error(run):
    if run.get("note"):
        return run["note"]
    rc = run.get("rc")
    why = "timed out" if rc in ("124", "137") else f"exit {rc}"
    if rc == "0":
        why = "no JSON of the expected kind on stdout"
    tail = ""
    try:
        lines = [ln for ln in open(run["stem"] + ".log").read().splitlines() if ln.strip()]
        tail = lines[-1][:300] if lines else ""
    except OSError:
        pass
    return why + (f": {tail}" if tail else "")


def llama_run(run, gen):
    doc = load_json(run["stem"] + ".json") if run.get("rc") == "0" else None
    asked = [int(p) for p in run.get("prompts", "").split(",") if p.isdigit()]
    out = dict(rc=run.get("rc"), prefill={}, decode=None, asked=asked)
    if not isinstance(doc, list):
        out["error"] = run_error(run) if doc is None else "llama-bench JSON is not a list"
        return out
    for rec in doc:
        if not isinstance(rec, dict):
            continue
        npr, ng = rec.get("n_prompt"), rec.get("n_gen")
        if ng == 0 and npr:
            out["prefill"][int(npr)] = num(rec.get("avg_ts"))
        elif npr == 0 and ng == gen:
            out["decode"] = num(rec.get("avg_ts"))
        out.setdefault("build_commit", rec.get("build_commit"))
        out.setdefault("n_threads", rec.get("n_threads"))
        out.setdefault("gpu_info", rec.get("gpu_info"))
    return out


def check(name, value, limit):
    v = num(value)
    return dict(check=name, value=v, limit=limit, status="n/a" if v is None else ("PASS" if v >= limit else "MISS"))


def summarize_row(shape, row, runs, prompts, gen):
    """A row's figures and checks. The host-budget row is compared with llama.cpp's run of the
    same N (label ngl<N>) and checked against its host budget too."""
    is_host = row["label"].startswith("host")
    llama_label = f"ngl{row['ngl']}" if is_host else row["label"]
    hr = [hoist_run(r) for r in runs if r["kind"] == "hoist" and r["shape"] == shape and r["label"] == row["label"]]
    hr.sort(key=lambda h: h["prompt"])
    lr = [llama_run(r, gen) for r in runs if r["kind"] == "llama" and r["shape"] == shape and r["label"] == llama_label]
    llama = lr[0] if lr else dict(prefill={}, decode=None, asked=[], error="not run")
    first = next((h for h in hr if h["doc"]), hr[0] if hr else None)
    by_prompt = {h["prompt"]: h for h in hr}
    streamed_row = row.get("expected_streamed", 0) > 0
    res = dict(label=row["label"], ngl=row["ngl"], llama_ngl=row["llama_ngl"], gpu_memory=row.get("gpu_memory"),
               host_memory=row.get("host_memory"), expected_streamed=row.get("expected_streamed"),
               llama_gpu_bytes=row.get("llama_gpu_bytes"), hoist_gpu_weight_bytes=row.get("hoist_gpu_weight_bytes"),
               hoist=hr, llama=llama, checks=[])
    res["decode"] = first["decode"] if first else None
    res["decode_bound"] = first.get("decode_bound") if first else None
    res["decode_fraction"] = first.get("decode_fraction") if first else None
    res["decode_llama"] = llama.get("decode")
    res["decode_ratio"] = ratio(res["decode"], res["decode_llama"])
    res["peak_rss"] = max((h["peak_rss"] for h in hr if h["peak_rss"]), default=None)
    if first and first["doc"]:
        p = first.get("placement") or {}
        res["streamed"] = (first.get("pinned_layers"), first.get("file_layers")) if first["streaming"] else (0, 0)
        if res["streamed"] == (None, None) and p:
            res["streamed"] = (p.get("pinned"), p.get("file"))
    if streamed_row:
        res["checks"].append(check("decode / streaming bound", res["decode_fraction"], TARGETS["decode_bound"]))
        res["checks"].append(check("decode / llama.cpp", res["decode_ratio"], TARGETS["decode_x_llama"]))
    res["prefill"] = {}
    for P in prompts:
        h = by_prompt.get(P)
        cell = dict(hoist=h["prefill"] if h else None, fraction=h.get("prefill_fraction") if h else None,
                    bound=h.get("prefill_bound") if h else None, llama=llama["prefill"].get(P),
                    llama_run=P in llama["asked"] or P in llama["prefill"])
        cell["ratio"] = ratio(cell["hoist"], cell["llama"])
        res["prefill"][P] = cell
        if streamed_row and h is not None:
            res["checks"].append(check(f"prefill {P} / its bound", cell["fraction"], TARGETS["prefill_bound"]))
            if cell["llama_run"]:
                res["checks"].append(check(f"prefill {P} / llama.cpp", cell["ratio"], TARGETS["prefill_x_llama"]))
    if is_host:
        budget, rss = num(row.get("host_memory")), num(res["peak_rss"])
        limit = None if budget is None else budget + RSS_SLACK
        status = "n/a" if budget is None or rss is None else ("PASS" if rss <= limit else "FAIL")
        res["rss_check"] = dict(check="peak RSS <= host budget + 512 MiB", value=rss, limit=limit, status=status)
    return res


def streamed_cell(r):
    s = r.get("streamed")
    exp = r.get("expected_streamed")
    if s is None:
        return f"n/a (expected {exp})"
    if num(s[0]) is None and num(s[1]) is None:
        return f"n/a (expected {exp})"
    pinned, file_ = num(s[0]) or 0, num(s[1]) or 0
    total = pinned + file_
    text = f"{total}" + (f" (pinned {pinned}, file {file_})" if file_ else "")
    if exp is not None and total != exp:
        text += f" (expected {exp})"
    return text


def verdict(checks):
    if not checks:
        return "reference"
    miss = [c["check"] for c in checks if c["status"] in ("MISS", "FAIL")]
    na = [c for c in checks if c["status"] == "n/a"]
    if miss:
        return "MISS: " + ", ".join(miss)
    if not na:
        return "PASS"
    return "n/a" if len(na) == len(checks) else f"n/a ({len(na)} of {len(checks)} checks unmeasured, the others PASS)"


def cmd_summary(a):
    out = a.outdir
    runs = read_manifest(os.path.join(out, "runs.tsv"))
    plans = []
    for path in glob.glob(os.path.join(out, "plan_*.json")):
        try:
            plans.append(json.load(open(path)))
        except (OSError, ValueError) as e:
            print(f"summary: {path}: {e}", file=sys.stderr)
    order = [r["shape"] for r in runs]  # the shapes in the order they ran
    plans.sort(key=lambda p: order.index(p.get("shape")) if p.get("shape") in order else len(order))
    # failed: a non-zero exit (or skipped), or a run that exited 0 without its JSON
    failed = [r for r in runs if r.get("rc") != "0"
              or (r["kind"] == "hoist" and not isinstance(load_json(r["stem"] + ".json"), dict))
              or (r["kind"] == "llama" and not isinstance(load_json(r["stem"] + ".json"), list))]
    md = ["# hoist layer streaming against llama.cpp partial offload", ""]
    md.append(f"Page cache: {'warm (page cache holds the file)' if a.page_cache == 'warm' else 'cold (dropped before each run)'}; "
              f"batch 1, {a.gen} decode tokens; hoist `run --benchmark` (decode after the shortest prompt), "
              f"`llama-bench -ngl N -n {a.gen}` (decode from an empty context). Targets of a streamed row: decode >= "
              f"{TARGETS['decode_bound']} of its streaming bound and >= {TARGETS['decode_x_llama']}x llama.cpp, prefill "
              f">= {TARGETS['prefill_bound']} of its bound and >= {TARGETS['prefill_x_llama']}x llama.cpp.")
    md.append("")
    md.append("GPU weights: hoist's `--gpu-memory` is the fixed weights (token_embd, output, norms) + the first N "
              "layers' matrices + slack; llama.cpp's `-ngl N` (N <= layers) holds the last N layers and keeps "
              "token_embd and output.weight on the CPU.")
    summary = dict(page_cache=a.page_cache, gen=a.gen, targets=TARGETS, shapes=[], failed_runs=[])
    host_ok = None
    for plan in plans:
        shape = plan["shape"]
        prompts = sorted({int(r["prompts"]) for r in runs if r["kind"] == "hoist" and r["shape"] == shape
                          and r["prompts"].isdigit()})
        rows = list(plan["rows"])
        host = plan.get("host")
        host_runs = [r for r in runs if host and r["kind"] == "hoist" and r["shape"] == shape and r["label"] == host["label"]]
        if host and host_runs:
            host = dict(host, host_memory=int(host_runs[0]["host_memory"]) if host_runs[0]["host_memory"].isdigit() else None)
            rows.append(host)
        results = [summarize_row(shape, row, runs, prompts, a.gen) for row in rows]
        lbs = [r["llama"] for r in results if r["llama"].get("build_commit")]
        md += ["", f"## {shape}: {os.path.basename(plan['file'])} ({plan['file_bytes'] / 1e9:.2f} GB, {plan['layers']} layers, "
               f"layer matrices {plan['layer_bytes'][0] / 1e6:.1f} MB each, fixed {plan['fixed_bytes'] / 1e6:.1f} MB)", ""]
        if lbs:
            md.append(f"llama.cpp build {lbs[0].get('build_commit')}, {lbs[0].get('n_threads')} threads, "
                      f"{lbs[0].get('gpu_info')}.")
            md.append("")
        head = ["N (-ngl)", "streamed layers", "GPU weights GB hoist / llama.cpp", "decode hoist tok/s", "bound",
                "fraction", "decode llama.cpp", "hoist / llama"]
        for P in prompts:
            head += [f"prefill {P} hoist", "fraction of bound", f"prefill {P} llama.cpp", "hoist / llama"]
        head += ["peak RSS GiB", "targets"]
        md.append("| " + " | ".join(head) + " |")
        md.append("|" + " --- |" * len(head))
        for r in results:
            n = f"{r['ngl']} (all resident)" if r["expected_streamed"] == 0 else str(r["ngl"])
            if r["label"].startswith("host"):
                n += f", host budget {gib(r.get('host_memory'))} GiB"
            cells = [n, streamed_cell(r), f"{gb(r['hoist_gpu_weight_bytes'])} / {gb(r['llama_gpu_bytes'])}",
                     fmt(r["decode"]), fmt(r["decode_bound"]), fmt(r["decode_fraction"], 2), fmt(r["decode_llama"]),
                     fmt(r["decode_ratio"], 2)]
            for P in prompts:
                c = r["prefill"][P]
                cells += [fmt(c["hoist"], 0), fmt(c["fraction"], 2),
                          fmt(c["llama"], 0) if c["llama_run"] else "not run", fmt(c["ratio"], 2)]
            cells += [gib(r["peak_rss"]), verdict(r["checks"] + ([r["rss_check"]] if "rss_check" in r else []))]
            md.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        md.append("")
        # hoist's own measurements behind the bounds, and each row's failures
        for r in results:
            h = next((h for h in r["hoist"] if h["doc"]), None)
            if h and h["streaming"]:
                md.append(f"- N={r['ngl']} ({r['label']}): {val(h.get('resident_layers'))} resident, {val(h.get('slots'))} slots, "
                          f"{gb(h.get('streamed_bytes_per_token'))} GB streamed per token, H2D {fmt(h.get('h2d_gbps'))} GB/s, "
                          f"file {fmt(h.get('file_gbps'))} GB/s, decode compute {ms(h.get('decode_compute_seconds'))} ms/token, "
                          f"prefill compute {ms(h.get('prefill_compute_seconds'))} ms"
                          + (f"; placement: GPU {gb(h['placement'].get('gpu_bytes'))} of {gb(h['placement'].get('gpu_budget_bytes'))} GB, "
                             f"host {gb(h['placement'].get('host_bytes'))} of {gb(h['placement'].get('host_budget_bytes'))} GB"
                             if h.get("placement") else ""))
            for x in r["hoist"]:
                if not x["doc"]:
                    md.append(f"- N={r['ngl']} ({r['label']}) hoist, prompt {x['prompt']}: {x.get('error')}")
            if "error" in r["llama"]:
                md.append(f"- N={r['ngl']} ({r['label']}) llama-bench: {r['llama']['error']}")
        # the host budget's memory check
        for r in results:
            c = r.get("rss_check")
            if c is None:
                continue
            host_ok = (host_ok is not False) and c["status"] == "PASS"
            budget = r.get("host_memory")
            md.append("")
            md.append(f"**Host budget** (N={r['ngl']}, `--host-memory` {budget if budget is not None else 'n/a'} bytes = "
                      f"{gib(budget)} GiB, half of the streamed layers' bytes; the rest is read from the file each step): "
                      f"peak RSS {gib(c['value'])} GiB, limit {gib(c['limit'])} GiB (budget + 512 MiB): **{c['status']}**")
        md.append("")
        # every check, with its value
        lines = [f"- N={r['ngl']} ({r['label']}): " + "; ".join(
            f"{c['check']} {fmt(c['value'], 2)} >= {c['limit']} {c['status']}" for c in r["checks"])
            for r in results if r["checks"]]
        if lines:
            lines.append(f"- a streamed row PASSes when every check does; {len(lines)} streamed row(s), "
                         f"{sum(1 for r in results if r['checks'] and verdict(r['checks']).startswith('PASS'))} PASS")
        if lines:
            md += ["Targets:", ""] + lines
        for note in plan.get("notes", []):
            md.append(f"- note: {note}")
        for r in results:
            for h in r["hoist"]:
                h.pop("doc", None)
        summary["shapes"].append(dict(shape=shape, file=plan["file"], layers=plan["layers"], fixed_bytes=plan["fixed_bytes"],
                                      layer_bytes=plan["layer_bytes"], prompts=prompts, rows=results))
    other = [r for r in failed if r["kind"] not in ("hoist", "llama")]
    if other or not plans:
        md += ["", "## Other steps", ""]
        md += [f"- {r['kind']} {r['shape']} {r['label']}: {run_error(r)}" for r in other]
        if not plans:
            md.append("- no plan: nothing was measured")
    summary["failed_runs"] = [dict(kind=r["kind"], shape=r["shape"], label=r["label"], prompts=r["prompts"], rc=r["rc"],
                                   error=run_error(r)) for r in failed]
    summary["host_budget_ok"] = host_ok
    text = "\n".join(md) + "\n"
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(text)
    bad = bool(failed) or host_ok is False or not plans
    if bad:
        print(f"stream: {len(failed)} run(s) failed or skipped" + ("; host budget exceeded or unmeasured" if host_ok is False else ""))
    sys.exit(1 if bad else 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("file")
    p.add_argument("--shape", required=True)
    p.add_argument("--json", required=True)
    p.add_argument("--ngl", default="24 16 3")
    p.add_argument("--gpu-memory", type=int, default=None)
    p.add_argument("--host-ngl", type=int, default=0)
    p.add_argument("--slack", type=int, default=16 * MIB)
    p = sub.add_parser("host-budget")
    p.add_argument("plan")
    p.add_argument("run", nargs="?")
    p = sub.add_parser("timev")
    p.add_argument("report")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = sub.add_parser("brief")
    p.add_argument("kind", choices=["hoist", "llama"])
    p.add_argument("file")
    p = sub.add_parser("summary")
    p.add_argument("outdir")
    p.add_argument("--gen", type=int, default=32)
    p.add_argument("--page-cache", choices=["warm", "cold"], default="warm")
    a = ap.parse_args()
    dict(plan=cmd_plan, **{"host-budget": cmd_host_budget, "timev": cmd_timev, "brief": cmd_brief, "summary": cmd_summary})[a.cmd](a)


if __name__ == "__main__":
    main()
