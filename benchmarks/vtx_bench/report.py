"""Turns result records into the Markdown and JSON tables (ratios, MFU, memory)."""

import json

from vtx_bench import flops as flops_lib

IMPLEMENTATION_ORDER = ("keras_vtx[jax]", "keras_vtx[tensorflow]", "keras_vtx[torch]",
                        "transformers", "timm")


def complete(records, forward_flops):
    """Adds FLOPs, MFU and the ratios keras_vtx / reference to each record (in place)."""
    for r in records:
        if "error" in r or "skipped" in r:
            continue
        forward = forward_flops.get(r["case"])
        r["flops_per_step"] = None
        r["mfu"] = None
        if forward and r["mode"] in ("train", "infer"):
            r["flops_per_step"] = forward * (3 if r["mode"] == "train" else 1)
            r["achieved_flops"] = r["flops_per_step"] / r["step_s"]
            peak = flops_lib.table_peak(r.get("device"), r["precision"])
            r["peak_source"] = "table" if peak else "measured matmul"
            peak = peak or r.get("measured_peak")
            r["peak_flops"] = peak
            r["mfu"] = r["achieved_flops"] / peak if peak else None
    by_key = {(r["case"], r["precision"], r["implementation"]): r for r in records
              if "throughput" in r}
    for r in records:
        if "throughput" not in r or not r["implementation"].startswith("keras_vtx"):
            continue
        for reference in ("transformers", "timm"):
            other = by_key.get((r["case"], r["precision"], reference))
            r[f"vs_{reference}"] = (r["throughput"] / other["throughput"]) if other else None
    return records


def _fmt(value, spec, missing="–"):
    return missing if value is None else format(value, spec)


def markdown(meta, records):
    lines = [f"Device: {meta['device']} · {meta['date']} · size {meta['size']} · "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v), "",
             "| case | precision | implementation | throughput | step | MFU | peak memory "
             "| vs transformers | vs timm | notes |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]

    def order(r):
        impl = r["implementation"]
        rank = IMPLEMENTATION_ORDER.index(impl) if impl in IMPLEMENTATION_ORDER else 99
        return (r["case_index"], r["precision"] != "bfloat16", rank)

    for r in sorted(records, key=order):
        label = f"{r['label']} {r['mode']} (batch {r['batch']})"
        if "throughput" not in r:
            note = r.get("error") or r.get("skipped")
            lines.append(f"| {label} | {r['precision']} | {r['implementation']} | – | – | – "
                         f"| – | – | – | {note} |")
            continue
        notes = []
        if r.get("loss_fraction") is not None:
            note = f"matcher + loss {100 * r['loss_fraction']:.1f}% of the step ({r['matcher']}"
            if r.get("other_loss_fraction") is not None:
                note += f"; {r['other_matcher']}: {100 * r['other_loss_fraction']:.1f}%"
            notes.append(note + ")")
        if r.get("compiled") is False and r["mode"] != "sample":
            notes.append(r.get("execution", "eager"))
        if r.get("attention"):
            notes.append(f"attention: {r['attention']}")
        if r.get("peak_source") == "measured matmul":
            notes.append("MFU vs measured matmul peak")
        memory = r.get("peak_bytes")
        lines.append(
            f"| {label} | {r['precision']} | {r['implementation']} | "
            f"{r['throughput']:,.1f} {r['unit']}/s | {1000 * r['step_s']:.1f} ms | "
            f"{_fmt(None if r.get('mfu') is None else 100 * r['mfu'], '.1f')}"
            f"{'' if r.get('mfu') is None else '%'} | "
            f"{_fmt(None if memory is None else memory / 2 ** 30, '.2f')}"
            f"{'' if memory is None else ' GiB'} | "
            f"{_fmt(r.get('vs_transformers'), '.2f')} | {_fmt(r.get('vs_timm'), '.2f')} | "
            f"{'; '.join(notes)} |")
    lines += _profile_table(sorted(records, key=order))
    return "\n".join(lines) + "\n"


def _profile_table(records):
    rows = [r for r in records if r.get("profile")]
    if not rows:
        return []
    from vtx_bench.profile import CATEGORIES

    lines = ["", "Where the step time goes (`--profile`: the kernels' self time by category, "
             "as shares of the kernel time per step; busy = the time the device ran kernels, "
             "as a share of the profiled steps' wall time):", "",
             "| case | precision | implementation | profiled | kernel time | busy | "
             + " | ".join(CATEGORIES) + " | costliest kernel |",
             "| --- | --- | --- | --- | ---: | ---: | " + " | ".join("---:" for _ in CATEGORIES)
             + " | --- |"]
    for r in rows:
        p = r["profile"]
        label = f"{r['label']} {r['mode']} (batch {r['batch']})"
        head = f"| {label} | {r['precision']} | {r['implementation']} |"
        if "error" in p:
            lines.append(head + " – | – | – | " + " | ".join("–" for _ in CATEGORIES)
                         + f" | {p['error']} |")
            continue
        busy = p.get("busy_fraction")
        top = p["top"][0] if p["top"] else None
        lines.append(
            head + f" {p['source']} | {1000 * p['op_s']:.1f} ms | "
            + (f"{100 * busy:.0f}%" if busy is not None else "–") + " | "
            + " | ".join(f"{100 * p['shares'][c]:.1f}%" for c in CATEGORIES) + " | "
            + (f"`{top[0][:60]}` ({top[1]}, {1000 * top[2]:.2f} ms)" if top else "–") + " |")
    return lines


def write(path_prefix, meta, records):
    with open(path_prefix + ".json", "w") as f:
        json.dump({"meta": meta, "results": records}, f, indent=2, default=str)
    text = markdown(meta, records)
    with open(path_prefix + ".md", "w") as f:
        f.write(text)
    return text
