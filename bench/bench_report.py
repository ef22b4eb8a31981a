#!/usr/bin/env python3
"""bench_report.py — turns the JSON lines of one bench/run-bench.sh run into bench.md (tables with
same-run ratios against the fastest valid llama.cpp build and PyTorch, and the issue's targets marked
met / not met) and bench.json (the same, machine-readable).

Usage: bench_report.py RUN.jsonl OUT.md OUT.json
"""
import json
import os
import statistics
import sys

TARGET_BW = 0.85       # decode >= 85% of the bandwidth limit (F16/BF16/Q8_0/Q4_0/Q4_K, 135M and 0.5B)
TARGET_PP = 1.5        # prefill >= 1.5x the best llama.cpp build
TARGET_BATCH = 1.5     # batched generation at 16 and 64 sequences >= 1.5x llama-batched-bench
TARGET_SCORE = 1.5     # scoring >= 1.5x llama-perplexity
TARGET_TRAIN_TORCH = 1.5
TARGET_TRAIN_LLAMA = 4.0
BW_TYPES = {"F16", "BF16", "Q8_0", "Q4_0", "Q4_K"}


def load(path):
    recs = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs


def label_of(path):
    return os.path.basename(path)[:-5] if path.endswith(".gguf") else os.path.basename(path)


def fmt(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def ratio(a, b):
    return a / b if a and b else None


def mark(ok):
    return "" if ok is None else (" ✓" if ok else " ✗")


def main():
    recs = load(sys.argv[1])
    machine = next((r for r in recs if r.get("tool") == "machine"), {})
    ours = {label_of(r["model"]): r for r in recs
            if r.get("tool") == "iteralign" and "model" in r and r.get("precision") != "bf16"}
    # the opt-in IA_PRECISION=bf16 runs of F32/F16 models: their own table, no target
    ours_bf16 = {label_of(r["model"]): r for r in recs
                 if r.get("tool") == "iteralign" and "model" in r and r.get("precision") == "bf16"}
    def med(key):
        """median of a bandwidth figure over every model's run (None if never measured)"""
        v = [r[key] for r in recs if r.get("tool") == "iteralign" and r.get(key)]
        return statistics.median(v) if v else None
    bw, bw1 = med("bw_gbs"), med("bw1_gbs")
    bwn = med("bwn_gbs") or bw
    peers_absent = [r for r in recs if r.get("tool") == "llama.cpp" and r.get("absent")]
    peer = [r for r in recs if r.get("tool") == "llama.cpp" and not r.get("absent") and r.get("model")]

    def best_peer(model, test, **kw):
        """fastest valid llama.cpp figure for (model, test): (tps, build) or (None, None)"""
        c = [r for r in peer if r["model"] == model and r["test"] == test and not r.get("failed") and r.get("tps")
             and all(r.get(k) == v for k, v in kw.items())]
        if not c:
            return None, None
        r = max(c, key=lambda r: r["tps"])
        return r["tps"], r.get("build")

    out = {"machine": machine, "bw_gbs": bw, "bw1_gbs": bw1, "models": {}, "batch": [], "train": {}, "targets": []}
    targets = out["targets"]
    L = []
    L.append("# iteralign benchmark")
    L.append("")
    L.append(f"{machine.get('stamp', '?')}, tree {machine.get('tree', '?')}, mode {machine.get('mode', '?')}: {machine.get('cpu', '?')}, "
             f"{machine.get('cores', '?')} cores, {machine.get('threads', '?')} threads for every tool, "
             f"OMP_WAIT_POLICY={machine.get('omp_wait_policy', '?')} (llama.cpp: best of its default and passive), "
             f"load average at the start {machine.get('loadavg', '?')}; CPU flags: {machine.get('flags', '').strip()}.")
    L.append("")
    nbw = sum(1 for r in recs if r.get("tool") == "iteralign" and r.get("bw_gbs"))
    L.append(f"Read bandwidth (median of the {nbw} probes run beside the models): {fmt(bwn)} GB/s "
             f"({machine.get('threads', '?')} threads), {fmt(bw1)} GB/s (1 thread); "
             f"the decode limit uses the better, **{fmt(bw)} GB/s**: limit = bandwidth / bytes of weights read per token.")
    if peers_absent:
        L.append("")
        L.append(f"llama.cpp: **absent** ({peers_absent[0].get('why', '')}): no ratios against it.")
    ok_keys = {(r["model"], r["test"]) for r in peer if not r.get("failed")}
    failed = [r for r in peer if r.get("failed") and (r["model"], r["test"]) not in ok_keys]
    if failed:
        L.append("")
        L.append("llama.cpp runs that failed or timed out (BENCH_PEER_TIMEOUT): " +
                 ", ".join(f"{r['model']} {r['test']} ({r.get('omp', '?')})" for r in failed) + ".")
    builds = sorted({r.get("build") for r in peer if r.get("build")})
    if builds:
        L.append("")
        L.append("llama.cpp builds measured: " + ", ".join(f"`{b}`" for b in builds) +
                 " (ratios use the fastest valid build per figure).")
    L.append("")
    L.append("## Prefill, decode, scoring (tokens/s)")
    L.append("")
    L.append("| model | weights MB/token | decode limit | tg ours | % of limit | tg llama.cpp | tg ratio | "
             "pp ours | pp llama.cpp | pp ratio | score ours | score llama.cpp | score ratio | ppl ours / llama.cpp | checks |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for lab, r in ours.items():
        wb = r.get("weight_bytes_per_token")
        lim = bw * 1e9 / wb if bw and wb else None
        tg = (r.get("tg") or {}).get("tps")
        pp = (r.get("pp") or {}).get("tps")
        sc = (r.get("score") or {}).get("tps")
        ppl = (r.get("score") or {}).get("ppl")
        ltg, _ = best_peer(lab, "tg")
        lpp, _ = best_peer(lab, "pp")
        lsc, _ = best_peer(lab, "score")
        lppl = next((x.get("ppl") for x in peer if x["model"] == lab and x["test"] == "score" and x.get("ppl")), None)
        frac = tg / lim if tg and lim else None
        typ = r.get("type", "?")
        shape_ok = lab.startswith("smollm2-135m") or lab.startswith("qwen2.5-0.5b")
        checks = []
        for k in ("pp", "score", "check"):
            c = r.get(k) if k == "check" else (r.get(k) or {}).get("check")
            if c is not None:
                checks.append(f"{k} {'ok' if c.get('ok') else 'FAILED'}")
        if (r.get("tg") or {}).get("allocs_in_loop"):
            checks.append("tg allocates!")
        if r.get("ok") is False:
            checks.append("**run FAILED a check**")
        if r.get("contention_events"):
            checks.append(f"another process held a core {r['contention_events']}x (ran 1 thread meanwhile)")
        t_bw = frac >= TARGET_BW if frac is not None and typ in BW_TYPES and shape_ok else None
        t_tg = tg >= ltg if tg and ltg else None
        t_pp = pp / lpp >= TARGET_PP if pp and lpp else None
        t_sc = sc / lsc >= TARGET_SCORE if sc and lsc else None
        if r.get("ok") is False:  # a run that failed a check posts no met target, however fast
            t_bw, t_tg, t_pp, t_sc = (False if t is not None else None for t in (t_bw, t_tg, t_pp, t_sc))
        for name, ok, val in (("decode >= 85% of bandwidth limit", t_bw, frac), ("decode >= llama.cpp", t_tg, ratio(tg, ltg)),
                              ("prefill >= 1.5x llama.cpp", t_pp, ratio(pp, lpp)), ("scoring >= 1.5x llama.cpp", t_sc, ratio(sc, lsc))):
            if ok is not None:
                targets.append({"model": lab, "target": name, "value": val, "met": ok})
        L.append(f"| {lab} | {fmt(wb / 1e6 if wb else None)} | {fmt(lim)} | {fmt(tg)} | "
                 f"{fmt(frac * 100 if frac else None, 0)}%{mark(t_bw)} | {fmt(ltg)} | {fmt(ratio(tg, ltg), 2)}{mark(t_tg)} | "
                 f"{fmt(pp)} | {fmt(lpp)} | {fmt(ratio(pp, lpp), 2)}{mark(t_pp)} | {fmt(sc)} | {fmt(lsc)} | "
                 f"{fmt(ratio(sc, lsc), 2)}{mark(t_sc)} | {fmt(ppl, 0)} / {fmt(lppl, 0)} | {', '.join(checks)} |")
        out["models"][lab] = {"type": typ, "weight_bytes_per_token": wb, "tg_limit": lim, "tg": tg, "tg_llama": ltg,
                              "pp": pp, "pp_llama": lpp, "score": sc, "score_llama": lsc, "ppl": ppl, "ppl_llama": lppl,
                              "ok": r.get("ok"), "kernel": r.get("kernel")}
    L.append("")
    L.append("✓/✗: the issue's target for that figure met / not met in this run (decode: >= 85% of the bandwidth "
             "limit for F16/BF16/Q8_0/Q4_0/Q4_K and never below llama.cpp; prefill and scoring: >= 1.5x llama.cpp). "
             "Checks: fast kernels vs the scalar reference (logits), big batches vs small (bitwise); a model whose run "
             "failed a check meets none of its targets.")

    if ours_bf16:
        L.append("")
        L.append("## Opt-in: F32/F16 weights multiplied as bf16 (`IA_PRECISION=bf16`; no target, the defaults above count)")
        L.append("")
        L.append("| model | pp default | pp bf16 | pp llama.cpp | pp bf16 ratio | tg default | tg bf16 | tg llama.cpp | check |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        out["bf16_precision"] = {}
        for lab, r in ours_bf16.items():
            d = ours.get(lab, {})
            pp, tg = (r.get("pp") or {}).get("tps"), (r.get("tg") or {}).get("tps")
            dpp, dtg = (d.get("pp") or {}).get("tps"), (d.get("tg") or {}).get("tps")
            lpp, _ = best_peer(lab, "pp")
            ltg, _ = best_peer(lab, "tg")
            c = r.get("check") or {}
            ok = bool(c.get("ok")) and r.get("ok") is not False
            L.append(f"| {lab} | {fmt(dpp)} | {fmt(pp)} | {fmt(lpp)} | {fmt(ratio(pp, lpp), 2)} | {fmt(dtg)} | {fmt(tg)} | "
                     f"{fmt(ltg)} | {'ok' if ok else '**FAILED**'} (vs the f32 reference: "
                     f"{fmt(c.get('batch_rel_diff'), 4) if c.get('batch_rel_diff') is not None else '—'}) |")
            out["bf16_precision"][lab] = {"pp": pp, "tg": tg, "pp_default": dpp, "tg_default": dtg, "pp_llama": lpp,
                                          "tg_llama": ltg, "ok": ok}

    brows = [(lab, b) for lab, r in ours.items() for b in (r.get("batch") or [])]
    if brows:
        L.append("")
        L.append("## Batched generation (generated tokens/s; 128-token prompts, 128 new tokens each)")
        L.append("")
        L.append("| model | sequences | ours | llama-batched-bench | ratio | check |")
        L.append("|---|---:|---:|---:|---:|---|")
        for lab, b in brows:
            lt, _ = best_peer(lab, "batch", npl=b["npl"])
            rt = ratio(b["tps"], lt)
            t = rt >= TARGET_BATCH if rt and b["npl"] >= 16 else None
            if t is not None:
                targets.append({"model": lab, "target": f"batched x{b['npl']} >= 1.5x llama.cpp", "value": rt, "met": t})
            c = b.get("check")
            L.append(f"| {lab} | {b['npl']} | {fmt(b['tps'])} | {fmt(lt)} | {fmt(rt, 2)}{mark(t)} | "
                     f"{'' if c is None else ('ok' if c.get('ok') else 'FAILED')} |")
            out["batch"].append({"model": lab, "npl": b["npl"], "tps": b["tps"], "llama": lt, "ratio": rt})

    tr = [r for r in recs if r.get("test") == "train"]
    if tr:
        L.append("")
        L.append("## LoRA training (rank 8 on q,k,v,o,gate,up,down; SmolLM2-135M shape, F32; forward + backward + AdamW)")
        L.append("")
        L.append("| tool | tokens/s | peak MiB | iteralign f32 / it | iteralign bf16 / it |")
        L.append("|---|---:|---:|---:|---:|")
        me = next((r for r in tr if r.get("tool") == "iteralign" and not r.get("absent") and r.get("tps")), None)
        me16 = next((r for r in tr if r.get("tool") == "iteralign-bf16" and not r.get("absent") and r.get("tps")), None)
        for r in tr:
            name = r.get("tool")
            if r.get("absent") or r.get("failed"):
                L.append(f"| {name} | absent: {r.get('why', 'failed')} | | | |")
                continue
            mine = name.startswith("iteralign")
            r32 = ratio(me and me.get("tps"), r.get("tps")) if not mine else None
            r16 = ratio(me16 and me16.get("tps"), r.get("tps")) if not mine else None
            L.append(f"| {name} | {fmt(r.get('tps'))} | {fmt(r.get('peak_mib'), 0)} | {fmt(r32, 2)} | {fmt(r16, 2)} |")
            out["train"][name] = {"tps": r.get("tps"), "peak_mib": r.get("peak_mib")}
        # the targets take our faster mode against the peers' faster (PyTorch: fp32 or bf16 autocast);
        # the f32-only ratios are in the table
        best = max((x for x in (me, me16) if x), key=lambda x: x["tps"], default=None)
        mode = "" if best is None else (" (bf16 products)" if best is me16 else " (f32)")
        torch = [r.get("tps") for r in tr if r.get("tool", "").startswith("torch") and r.get("tps")]
        if best and torch:
            rt = best["tps"] / max(torch)
            targets.append({"model": "smollm2-135m-f32", "target": "LoRA training >= 1.5x PyTorch (faster of fp32/bf16)" + mode,
                            "value": rt, "met": rt >= TARGET_TRAIN_TORCH})
        ft = next((r for r in tr if r.get("tool") == "llama-finetune-lora" and r.get("tps")), None)
        if best and ft:
            rt = best["tps"] / ft["tps"]
            targets.append({"model": "smollm2-135m-f32", "target": "LoRA training >= 4x llama-finetune-lora" + mode,
                            "value": rt, "met": rt >= 4.0})
            if best.get("peak_mib") and ft.get("peak_mib"):
                rm = best["peak_mib"] / ft["peak_mib"]
                targets.append({"model": "smollm2-135m-f32", "target": "LoRA training peak memory <= llama-finetune-lora's" + mode,
                                "value": rm, "met": rm <= 1.0})

    if targets:
        met = sum(1 for t in targets if t["met"])
        L.append("")
        L.append(f"## Targets: {met} of {len(targets)} met in this run")
        L.append("")
        for t in targets:
            if not t["met"]:
                L.append(f"- not met: {t['model']}: {t['target']} (value {fmt(t['value'], 2)})")
    json.dump(out, open(sys.argv[3], "w"), indent=1)
    open(sys.argv[2], "w").write("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
