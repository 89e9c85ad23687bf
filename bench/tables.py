"""Result tables of the README and docs/benchmarks.md from `bench/results/*.json`, so no page quotes a stale figure.

    .venv/bin/python bench/tables.py          # rewrites the sections between <!-- NAME:START/END --> markers
Sections: DEMO-RESULTS (bench/results/demo.json, in README.md), SDPO-RESULTS (sdpo.json), SERVING-RESULTS
(serving.json), FAIRNESS-RESULTS (fairness.json) and PRETRAINED-RESULTS (pretrained.json), in docs/benchmarks.md;
SCALE-RESULTS (scale.json) in README.md. A section may sit in any of the
DOCUMENTS; one whose results file is missing is left as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")  # the pages that hold result sections
SECTIONS = ("SDPO-RESULTS", "SERVING-RESULTS", "FAIRNESS-RESULTS", "DEMO-RESULTS", "PRETRAINED-RESULTS",
            "SCALE-RESULTS")


def fmt(entry: dict | None, digits: int = 3) -> str:
    """`0.287 ± 0.004 (3 seeds)` from a {"mean", "std", "seeds"} entry."""
    if not entry or entry.get("mean") is None:
        return "—"
    n = sum(v is not None for v in entry.get("seeds", {}).values())
    spread = f" ± {entry['std']:.{digits}f}" if n > 1 else ""
    return f"{entry['mean']:.{digits}f}{spread} ({n} seed{'s' if n != 1 else ''})"


def sdpo_section(r: dict) -> str:
    names = [("mostpop", "MostPop"), ("sasrec", "SASRec (the frozen encoder)"), ("sft", "SFT (hybrid prompts)"),
             ("dpo", "DPO (N=1)"), ("sdpo", "S-DPO (N=3)"), ("sdpo_all", "S-DPO (N=19)"),
             ("dr_sdpo", "Dr. S-DPO (N=3)"), ("beta_sdpo", "beta-S-DPO (N=3)"), ("alpha_sdpo", "alpha-S-DPO (N=3)"),
             ("sft_summary", "SFT (hybrid+summary prompts)"), ("sdpo_summary", "S-DPO (N=3, hybrid+summary prompts)")]
    lines = [f"**Quality** — scale: {r.get('scale', '?')}. Machine: {r.get('device', '?')}; {r.get('date', '?')}; "
             f"`{r.get('command', '?')}`.", "",
             "| model | `hr@1` score mode, `all` test | `hr@1_last` | `hr@1` generate mode | `valid_ratio` |",
             "| --- | --- | --- | --- | --- |"]
    for key, label in names:
        if key in r:
            m = r[key]
            lines.append(f"| {label} | {fmt(m.get('hr@1'))} | {fmt(m.get('hr@1_last'))} | "
                         f"{fmt(m.get('generate_hr@1'))} | {fmt(m.get('valid_ratio'))} |")
    gap = r.get("gap_closed") or {}
    if gap:
        lines += ["", "**Gap to SASRec closed by S-DPO (N=3)**, (S-DPO - SFT) / (SASRec - SFT) in score-mode `hr@1`, "
                      "per seed then averaged: " + "; ".join(f"{prompt} prompts {fmt(entry, 2)}"
                                                            for prompt, entry in gap.items()) + "."]
    cost = r.get("step_cost_details") or r.get("step_cost")
    if cost:
        tokens = cost.get("tokens_per_batch", {})
        lines += ["", f"**Step cost** (`python bench/sdpo.py step-cost --write`; {cost.get('model', '')}; median of "
                      f"{cost.get('batches', '?')} batches of {cost.get('batch_size', 16)} prompts, forward + backward "
                      f"+ AdamW, interleaved in one run):", "",
                  "| step | seconds | x SFT step | layer-token bound |", "| --- | --- | --- | --- |",
                  f"| SFT (prompt + target answer) | {cost['sft_s']:.3f} | 1.00 | 1.00 |",
                  f"| S-DPO N=3, one prompt pass | {cost['sdpo_n3_s']:.3f} | {cost['ratio_n3']:.2f} | "
                  f"{cost.get('layer_token_ratio_n3', float('nan')):.2f} |",
                  f"| S-DPO N=19, one prompt pass | {cost['sdpo_n19_s']:.3f} | {cost['ratio_n19']:.2f} | "
                  f"{cost.get('layer_token_ratio_n19', float('nan')):.2f} |",
                  f"| naive N=3 (N+1 full sequences, the authors' layout) | {cost['naive_n3_s']:.3f} | "
                  f"{cost['naive_n3_s'] / cost['sft_s']:.2f} | 4 x |", "",
                  f"Tokens per batch: prompts {tokens.get('prompt', '?')}, SFT answers {tokens.get('sft_answer', '?')}, "
                  f"N=3 answers {tokens.get('answers_n3', '?')}, N=19 answers {tokens.get('answers_n19', '?')}. The "
                  f"layer-token bound is the ratio of tokens through the decoder layers; the output layer adds "
                  f"(answer positions) x vocabulary x hidden, which for this tiny model costs about as much per "
                  f"position as both decoder layers, so N=19 costs more here than on a 7B model. Reference "
                  f"log-probs: {cost.get('reference_per_batch_s', float('nan')):.3f} s per batch of 16 (N=3, no "
                  f"gradients); peak resident memory {cost.get('peak_mem_gib', float('nan')):.2f} GiB."]
    return "\n".join(lines) + "\n"


def serving_section(r: dict) -> str:
    machine = r.get("machine", {})
    lines = [f"Measured with `{r.get('command', 'python bench/serving.py all --write')}` ({r.get('date', '?')}; "
             f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('torch_threads', '?')} "
             f"torch threads, torch {machine.get('torch', '?')}), serving `{Path(r.get('checkpoint', '?')).name}` of "
             f"`{Path(r.get('checkpoint', '?')).parent.name}`: the CPU-scale S-DPO model of `bench/sdpo.py` (tiny Llama "
             f"2 x 128, the demo's backbone size)."]
    fc = r.get("full_catalog")
    if fc:
        lines += ["", f"**Whole catalog** ({fc.get('n_users')} test users' final samples, their history excluded, "
                      f"retrieval depth N = {fc.get('retrieve_n')}; the target is among the N retrieved items for "
                      f"{fc.get('retrieval_hr@20', float('nan')):.3f} of the users, the ceiling of any re-ranking):",
                  "", "| ranking | HR@10 | NDCG@10 |", "| --- | --- | --- |",
                  f"| encoder's own full ranking | {fc['encoder']['hr@10']:.4f} | {fc['encoder']['ndcg@10']:.4f} |",
                  f"| retrieve N with the encoder, re-rank with the LLM | {fc['rerank']['hr@10']:.4f} | "
                  f"{fc['rerank']['ndcg@10']:.4f} |"]
    load = r.get("load")
    if load:
        lines += ["", f"**Load** ({load.get('requests')} requests at concurrency {load.get('concurrency')} on "
                      f"loopback): {load.get('errors')} errors, {load.get('mismatches')} answers differing from a "
                      f"direct `recommend` call; p50 {load.get('p50_ms', float('nan')):.0f} ms, p99 "
                      f"{load.get('p99_ms', float('nan')):.0f} ms; {load.get('rps', float('nan')):.1f} requests/s with "
                      f"micro-batching vs {load.get('rps_unbatched', float('nan')):.1f} one at a time (x"
                      f"{load.get('rps', 0) / max(load.get('rps_unbatched') or 1e-9, 1e-9):.2f}; both servers at "
                      f"{machine.get('torch_threads', '?')} torch threads, so the one-at-a-time server's threads fought "
                      f"each other for the cores: not a measure of what batching saves -- the micro-batching table "
                      f"below is)."]
    cold = r.get("cold_start_s")
    if cold is not None:
        lines += ["", f"**Cold start**: {cold.get('serve_to_health', float('nan')):.1f} s from `llmrec serve` to the "
                      f"first healthy `/health`; {cold.get('from_pretrained_to_first_answer', float('nan')):.1f} s from "
                      f"`Recommender.from_pretrained` to the first answer."]
    if r.get("batching"):
        lines += ["", *batching_table(r["batching"])]
    if r.get("models"):
        lines += ["", *models_table(r["models"])]
    if r.get("merge"):
        lines += ["", *merge_table(r["merge"])]
    return "\n".join(lines) + "\n"


def merge_table(merge: dict) -> list[str]:
    """`merge.<label>` of bench/serving.py: a LoRA checkpoint loaded with its adapters merged (as served) vs kept as
    peft layers, both in one process on the same histories, run back to back."""
    lines = ["**LoRA merged at load** (`bench/serving.py merge`: the same LoRA checkpoint loaded twice in one process, "
             "adapters merged into the base weights as `Recommender.from_pretrained` now does, and kept as peft "
             "layers as before; direct calls on the same test histories, each batch run by both back to back, "
             "alternating which goes first):", "",
             "| model | calls | requests | s a request, merged / unmerged | speedup | top-1 agreement | rankings changed "
             "| max score difference | threads | load | date |", "| --- | --- | --- | --- | --- | --- | --- | --- | "
             "--- | --- | --- |"]
    for label, latest in merge.items():
        for m, run in ((latest, "latest"), *((e, "earlier") for e in latest.get("earlier_runs", []))):
            for part, calls in (("batched", f"batches of {m['batch_size']}"), ("lone", "one at a time")):
                f, a = m[part], m[part]["agreement"]
                lines.append(f"| {label} (`{Path(m.get('checkpoint', '?')).name}`, {run} run) | {calls} | "
                             f"{f['requests']} | {f['seconds_merged'] / f['requests']:.2f} / "
                             f"{f['seconds_unmerged'] / f['requests']:.2f} | **{f['speedup']:.2f}x** | "
                             f"{a['top1_agreement']:.3f} | {a['rankings_changed']} | {a['max_score_diff']:.1e} | "
                             f"{m['threads']} | {load_text(m.get('load_average'))} | {m.get('date', '?')} |")
    return lines


def rate(per_second: float) -> str:
    """Requests/s to 3 significant figures at most: `56.5`, `0.277`."""
    return f"{per_second:.1f}" if per_second >= 10 else f"{per_second:.3g}"


def load_text(load: dict | None) -> str:
    """`1.2 -> 1.4`: the 1-minute load average at the start and the end of a measurement."""
    if not load:
        return "?"
    start, end = load.get("start") or load.get("before"), load.get("end") or load.get("after")
    return f"{start[0]:.1f} -> {end[0]:.1f}" if start and end else "?"


def batching_table(batching: dict) -> list[str]:
    """`batching.<label>` of bench/serving.py: the same server with micro-batches of 16 vs batch size 1, side by side
    in one run, each at its best thread count (probed in the same run)."""
    lines = ["**Micro-batching** (`bench/serving.py batching`: the same server and checkpoint with micro-batches vs "
             "batch size 1, side by side in one run; each at the torch thread count that served it best in a probe "
             "of the same run; lone client: concurrency 1, both servers at the baseline's thread count):", "",
             "| model | requests | concurrency | batched req/s (threads) | batch 1 req/s (threads) | speedup | "
             "lone client batched / batch 1 req/s | lone ratio | errors / mismatches | load | date, machine |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, b in batching.items():
        m = b.get("machine", {})
        lines.append(f"| {label} (`{Path(b.get('checkpoint', '?')).name}`) | {b['requests']} | {b['concurrency']} | "
                     f"{rate(b['rps_batched'])} ({b['threads_batched']}) | {rate(b['rps_batch1'])} ({b['threads_batch1']}) "
                     f"| {ratio_cell(b, lambda e: e['speedup'])} | {rate(b['rps_lone_batched'])} / "
                     f"{rate(b['rps_lone_batch1'])} | {lone_cell(b)} | {b['errors']} / {b['mismatches']} | "
                     f"{load_text(b.get('load_average'))} | {b.get('date', '?')}, {m.get('cpu', '?')} "
                     f"{m.get('cores', '?')} cores |")
    return lines


def lone_cell(b: dict) -> str:
    """A `batching` entry's lone-client ratio, then its earlier runs' (latest first)."""
    earlier = [f"{run['lone_client_ratio']:.3f} on {run.get('date', '?')}" for run in b.get("earlier_runs", [])]
    return f"{b['lone_client_ratio']:.3f}" + (f" (earlier: {'; '.join(earlier)})" if earlier else "")


def models_table(models: dict) -> list[str]:
    """`models.<label>` of bench/serving.py: cold start, latency, requests/s and memory per served model, and the
    int8 ranking path beside float32 with its keep rule."""
    lines = ["**Served models** (`bench/serving.py models`: `llmrec serve` with its defaults, k = 10, on loopback; "
             "memory is the server process's resident set):", "",
             "| model | cold start to /health, first answer (s) | c1 p50 / p99 (ms) | c1 req/s | c16 p50 / p99 (ms) | "
             "c16 req/s | RSS start / first answer / peak (MiB) | checkpoint / weights (MiB) | errors / mismatches | "
             "load |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, s in models.items():
        lat, mem, disk, cold = s["latency"], s["memory"]["server"], s["memory"]["disk"], s["cold_start_s"]
        c1, cn = lat["c1"], lat[f"c{s['concurrency'][-1]}"]
        base = f" + base {disk['base_weights_mb']:.0f}" if "base_weights_mb" in disk else ""
        note = f", {s['note']}" if s.get("note") else ""
        lines.append(f"| {label} ({s['requests']} requests{note}) | {cold['to_health']:.1f}, {cold['to_first_answer']:.1f} | "
                     f"{c1['p50_ms']:.0f} / {c1['p99_ms']:.0f} | {rate(c1['rps'])} | {cn['p50_ms']:.0f} / "
                     f"{cn['p99_ms']:.0f} | {rate(cn['rps'])} | {mem['after_start_mb']:.0f} / "
                     f"{mem['after_first_answer_mb']:.0f} / {mem['peak_mb']:.0f} | {disk['folder_mb']:.1f} / "
                     f"{disk['weights_mb']:.1f}{base} | {s['errors']} / {s['mismatches']} | "
                     f"{load_text(s.get('load_average'))} |")
    for label, s in models.items():
        for run in s.get("earlier_runs", []):
            lat = run["latency"]
            c1, cn = lat["c1"], lat[f"c{run['concurrency'][-1]}"]
            lines += ["", f"Earlier run of {label} ({run.get('date', '?')}"
                          f"{', ' + run['note'] if run.get('note') else ''}): c1 p50 / p99 {c1['p50_ms']:.0f} / "
                          f"{c1['p99_ms']:.0f} ms, {rate(c1['rps'])} req/s; c{run['concurrency'][-1]} "
                          f"{rate(cn['rps'])} req/s; int8 x{run['int8']['rps_ratio']:.2f}; RSS peak "
                          f"{run['memory']['server']['peak_mb']:.0f} MiB; {run['errors']} errors / "
                          f"{run['mismatches']} mismatches."]
    lines += ["", "| model | int8 c1 req/s (x float32) | top-1 agreement lone / batched | top-10 overlap lone / batched "
                  "| max score difference | kept |", "| --- | --- | --- | --- | --- | --- |"]
    for label, s in models.items():
        q = s["int8"]
        a = q["agreement"]
        lines.append(f"| {label} ({q['agreement_samples']} histories) | {rate(q['rps_c1'])} (x{q['rps_ratio']:.2f}) | "
                     f"{a['lone']['top1_agreement']:.3f} / {a['batched']['top1_agreement']:.3f} | "
                     f"{a['lone']['topk_overlap']:.3f} / {a['batched']['topk_overlap']:.3f} | "
                     f"{max(a['lone']['max_score_diff'], a['batched']['max_score_diff']):.3f} | "
                     f"{'yes' if q.get('keep') else 'no'} |")
    rule = next(iter(models.values()))["int8"].get("rule")
    if rule:
        lines += ["", f"Rule: {rule}."]
    return lines


def fairness_section(r: dict) -> str:
    names = [("mostpop", "MostPop"), ("sasrec", "SASRec"), ("llm", "LLM (SFT)"),
             ("llm_reweighted", "LLM, reweighted"), ("llm_reranked", "LLM, re-ranked"), ("sdpo", "S-DPO"),
             ("sdpo_reweighted", "S-DPO, reweighted"), ("sdpo_reranked", "S-DPO, re-ranked")]
    lines = [f"Scale: {r.get('scale', '?')}; {r.get('device', '?')}; {r.get('date', '?')}; `{r.get('command', '?')}`.",
             "", "| model | `hr@1` | MGU@1 | MGU@5 | MGU@10 | DGU@1 |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label in names:
        if key in r:
            m = r[key]
            lines.append(f"| {label} | " + " | ".join(fmt(m.get(k)) for k in ("hr@1", "mgu@1", "mgu@5", "mgu@10",
                                                                                  "dgu@1")) + " |")
    if r.get("alpha", {}).get("seeds"):
        lines += ["", f"Re-ranking alpha chosen on valid, per seed: LLM (SFT) {r['alpha']['seeds']}, S-DPO "
                      f"{r.get('alpha_sdpo', {}).get('seeds', {})}."]
    return "\n".join(lines) + "\n"


def number(value: float | None, spec: str) -> str:
    """`value` formatted with `spec`, or a dash when it was not measured."""
    return "—" if value is None else format(value, spec)


def demo_section(r: dict) -> str:
    machine = r.get("machine", {})
    wall = r.get("wall_seconds")
    lines = [f"Measured from a fresh clone with `{r.get('command', 'python bench/demo.py --write')}` "
             f"(`{r.get('timed_command', 'git clone && make install && make demo')}`; commit "
             f"`{str(r.get('commit', '?'))[:10]}`, {r.get('date', '?')}; {machine.get('cpu', '?')}, "
             f"{machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}): **{wall / 60:.1f} minutes** "
             f"wall ({'within' if r.get('within_target') else 'OVER'} the {r.get('target_seconds', 900) / 60:.0f}-minute "
             f"target), of which {r.get('setup_seconds', float('nan')):.0f} s set-up (`make install`).", "",
             "| stage | seconds | `hr@1` |", "| --- | --- | --- |"]
    for name, stage in r.get("stages", {}).items():
        hr = stage.get("hr@1")
        lines.append(f"| {name} | {stage['seconds']:.0f} | {'—' if hr is None else f'{hr:.3f}'} |")
    lines += ["", "Stage `hr@1`: encoder = SASRec on the LLMs' test samples; llm, sdpo = score mode; evaluate = the S-DPO "
                  "model in generate mode; rerank = after IFairLRS re-ranking."]
    table = r.get("table") or {}
    if table:
        lines += ["", f"Results on the same {r.get('n_test_samples', '?')} seeded test samples (score mode; "
                      "`valid_ratio` in generate mode), demo scale:", "",
                  "| model | `hr@1` | `valid_ratio` | `candidates/ndcg@5` | `mgu@1` |", "| --- | --- | --- | --- | --- |"]
        for label, m in table.items():
            cells = [m.get(k) for k in ("hr@1", "valid_ratio", "candidates/ndcg@5", "mgu@1")]
            lines.append(f"| {label} | " + " | ".join(number(v, ".3f") for v in cells) + " |")
    earlier = r.get("earlier_runs") or []
    if earlier:
        lines += ["", "Earlier runs of the same benchmark (newest first):", "",
                  "| date | commit | CPU | minutes wall | set-up s | " + " | ".join(
                      f"{name} s" for name in ("encoder", "llm", "sdpo")) + " | `hr@1` SFT / S-DPO / MostPop |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run in earlier:
            seconds, hr = run.get("stages_seconds", {}), run.get("hr@1", {})
            lines.append(
                f"| {str(run.get('date', '?'))[:10]} | `{str(run.get('commit', '?'))[:10]}` | "
                f"{run.get('machine', {}).get('cpu', '?')} | "
                f"{number(run['wall_seconds'] / 60 if run.get('wall_seconds') is not None else None, '.1f')} | "
                f"{number(run.get('setup_seconds'), '.0f')} | "
                + " | ".join(number(seconds.get(name), ".0f") for name in ("encoder", "llm", "sdpo"))
                + " | " + " / ".join(number(hr.get(label), ".3f") for label in ("SFT LLM", "S-DPO LLM", "MostPop"))
                + " |")
    return "\n".join(lines) + "\n"


def pretrained_section(r: dict) -> str:
    """The SmolLM2 rows of bench/pretrained.py, each with its scale, in the order they were measured."""
    machine = r.get("machine", {})
    lines = [f"`{r.get('command', 'python bench/pretrained.py quality --write')}` ({r.get('date', '?')}; "
             f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, torch {machine.get('torch', '?')}, "
             f"transformers {machine.get('transformers', '?')}). Scale: {r.get('scale', '?')}.", "",
             "| row | fine-tuning | prompt | SFT samples | score | `hr@1` | `candidates/ndcg@5` | `mgu@1` | "
             "`valid_ratio` (generate) | `hr@1` (generate) | train s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes: dict[str, int] = {}
    for name, row in (r.get("rows") or {}).items():
        prompt = row.get("prompt") or "—"
        cells = [row.get("finetune") or "—", prompt + (" (chat)" if row.get("prompt_format") == "chat" else ""),
                 number(row.get("sft_samples"), ",d") if row.get("sft_samples") is not None else "—",
                 row.get("score_norm") or "—"]
        cells += [number(row.get(k), ".3f") for k in ("hr@1", "candidates/ndcg@5", "mgu@1", "valid_ratio",
                                                      "generate_hr@1")]
        cells.append(number(row.get("train_seconds"), ".0f"))
        mark = ""
        if row.get("note"):  # a footnote under the table, one per distinct note
            notes.setdefault(row["note"], len(notes) + 1)
            mark = f" [{notes[row['note']]}]"
        lines.append(f"| {name}{mark} | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"[{i}] {note}." for note, i in notes.items()]
    speed = r.get("speed")
    if speed:
        lines += ["", *speed_table(speed)]
    return "\n".join(lines) + "\n"


def speed_table(s: dict) -> list[str]:
    """The `speed` section of pretrained.json: ours vs the plain Hugging Face way, side by side in one run."""
    machine, load = s.get("machine", {}), s.get("load_average", {})
    loads = ", ".join(f"{part} {v[0]}-{v[1]}" for part, v in load.items() if isinstance(v, list) and len(v) == 2)
    lines = [f"**Speed** (`{s.get('command', 'python bench/pretrained.py speed --write')}`, {s.get('measured', '?')}; "
             f"{s.get('llm', '?')}, {s.get('n_samples', '?')} seeded samples, seed {s.get('seed', '?')}, batch "
             f"{s.get('batch_size', '?')}, {s.get('threads', '?')} torch threads on {machine.get('cpu', '?')} "
             f"({machine.get('cores', '?')} cores); prompts: {s.get('prompt', '?')}; {s.get('prompt_tokens_mean', 0):.0f} "
             f"prompt and {s.get('answer_tokens_mean', 0):.1f} answer tokens a candidate on average). Matmul "
             f"throughput measured in the same run at the model's layer shapes: {number(s.get('matmul_gflops'), '.0f')} "
             f"GFLOPS for one decoder layer's mix at the start ({number(s.get('matmul_gflops_end'), '.0f')} at the end), {number(max((s.get('matmul_gflops_by_shape') or {'': None}).values(), default=None), '.0f')} "
             f"for the best single shape; the share column is achieved FLOPs/s over the mix figure. FLOPs counted with "
             f"`torch.utils.flop_counter` ({s.get('flops', '')}). 1-minute load average per part: {loads or '?'}.", "",
             "| path | samples/s | GFLOP/sample | share of matmul | vs plain | check |",
             "| --- | --- | --- | --- | --- | --- |"]

    def row(label: str, key: str, speedup: str | None, check: str) -> None:
        if s.get(f"{key}_samples_per_s") is None:
            return
        flops = s.get(f"{key}_flops_per_sample")
        lines.append(f"| {label} | {number(s.get(f'{key}_samples_per_s'), '.3f')} | "
                     f"{number(flops / 1e9 if flops is not None else None, ',.1f')} | "
                     f"{number(s.get(f'{key}_matmul_share'), '.2f')} | "
                     f"{number(s.get(speedup), '.1f') + 'x' if speedup and s.get(speedup) is not None else '1x' if speedup is None and key.startswith(('plain', 'full_plain')) else '—'} | {check} |")

    row("score mode, shared prompt + packed answers (ours)", "score", "score_speedup",
        f"same top-1 as plain on {number(s.get('score_vs_plain_same_top1'), '.0%')} of samples, max abs diff "
        f"{number(s.get('score_vs_plain_max_abs_diff'), '.1e')}")
    row("score mode, plain: a full forward per candidate", "plain_score", None, "")
    row("score mode, dynamic int8 (ours)", "int8_score", None,
        f"top-1 agreement with float {number(s.get('int8_top1_agreement'), '.2f')}; hr@1 {number(s.get('int8_hr@1'), '.3f')} "
        f"vs float {number(s.get('float_hr@1'), '.3f')}")
    row(f"score mode, first {s.get('cut_layers', '?')} layers (untrained: speed only)", "cut_score", None, "")
    for prefix, what in (("", f"LoRA r {(s.get('lora') or {}).get('r', '?')}"), ("full_", "full fine-tuning")):
        row(f"SFT {what}, windowed logits (ours)", f"{prefix}train", f"{prefix}train_speedup",
            f"loss equal to plain within {number(s.get(f'{prefix}train_vs_plain_loss_abs_diff'), '.1e')}")
        row(f"SFT {what}, plain `model(**batch).loss`", f"{prefix}plain_train", None, "")
    return lines


def megabytes(peaks: list[float | None]) -> str:
    """`8532+8844`: the peak resident MiB of each process of a run (the command's, then those it started)."""
    return "+".join(f"{x:.0f}" for x in peaks if x is not None)


def ratio_cell(entry: dict, ratio) -> str:
    """`entry`'s ratio in bold, with its `note`, then its earlier runs (`earlier_runs`, latest first), each with
    its date and note: `**1.00x** (earlier: 1.04x on 2026-12-07)`."""
    def said(run: dict) -> str:
        return f"{ratio(run):.2f}x on {run.get('date', '?')}" + (f", {run['note']}" if run.get("note") else "")

    cell = f"**{ratio(entry):.2f}x**" + (f" ({entry['note']})" if entry.get("note") else "")
    runs = entry.get("earlier_runs", [])
    return cell + (" (earlier: " + "; ".join(said(run) for run in runs) + ")" if runs else "")


def predict_ratio(p: dict) -> float:
    """One process's seconds / two processes' seconds of a `predict_all` entry."""
    return p["seconds_one_process"] / p["seconds_two_process"]


def scale_section(r: dict) -> str:
    """bench/scale.py (issue 21): 1 vs 2 processes of this CPU, each part side by side in one invocation."""
    m = r.get("machine", {})
    lines = [f"Measured with `bench/scale.py` on {m.get('cpu', '?')} ({m.get('cores', '?')} cores, no GPU; torch "
             f"{m.get('torch', '?')}); every row compares one process with all the cores' threads against two "
             "processes with one thread each (Lightning's launcher, DDP over gloo), on the same inputs in one "
             "invocation. On 2 cores, 2 processes cannot beat 1 process with 2 threads by much: the point is one "
             "code path on N devices, giving the same answers.", ""]
    sft = r.get("sft", {})
    if sft:
        lines += ["| SFT throughput (`train-llm`, steady state) | samples | effective batch (per process) | "
                  "1 process x 2 threads | 2 processes x 1 thread | 2 / 1 | peak MiB per process (1 / 2 processes) "
                  "| load | command, date |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, s in sft.items():
            runs = s.get("runs", {})
            load = " / ".join(load_text(runs.get(n, {}).get("load_average")) for n in ("one_process", "two_process"))
            lines.append(f"| {label}: {s['backbone']} | {s['samples']} | {s['effective_batch_size']} "
                         f"({s['per_process_batch']['one_process']} / {s['per_process_batch']['two_process']}) | "
                         f"{s['one_process_samples_per_s']:.2f} samples/s | {s['two_process_samples_per_s']:.2f} "
                         f"samples/s | {ratio_cell(s, lambda e: e['speedup'])} | "
                         f"{megabytes(runs['one_process']['peak_mb'])} / "
                         f"{megabytes(runs['two_process']['peak_mb'])} | {load} | `{s.get('command', r.get('command'))}`, "
                         f"{s.get('date', r.get('date'))} |")
        lines.append("")
    v = r.get("valid_hr@1")
    if v:
        pairs = ", ".join(f"seed {seed}: {a:.3f} / {b:.3f}" for seed, a, b in
                          zip(v["seeds"], v["one_process"], v["two_process"]))
        lines += [f"**Valid `hr@1`, 1 vs 2 processes at the same effective batch ({v['effective_batch_size']}) and "
                  f"samples** ({v['backbone']}, {v['samples']} training samples, one epoch, {v['valid_samples']} "
                  f"valid samples): mean {v['mean_one_process']:.3f} vs {v['mean_two_process']:.3f}, difference "
                  f"**{v['mean_abs_diff']:.3f}** ({'within' if v['within_0.01'] else 'NOT within'} the 0.01 target); "
                  f"per seed (1 / 2 processes) {pairs}. The runs differ only in the order the samples are dealt "
                  f"(RandomSampler vs DistributedSampler). `{v.get('command', r.get('command'))}`, "
                  f"{v.get('date', r.get('date'))}.", ""]
    predict = r.get("predict_all", {})
    if predict:
        lines += ["| `predict --all-users --split all`, k 10 | users | part size: users per rank (2 processes) | "
                  "1 process: s (users/s) | 2 processes: s (users/s) | 2 / 1 | peak MiB per process (1 / 2 "
                  "processes) | identical | one history (s) | command, date |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, p in predict.items():
            peak = p["peak_mb_per_process"]
            same = "yes, bit for bit" if p.get("bitwise_identical") else (
                f"yes (scores within {p['max_score_abs_diff']:.0e})" if p["identical"] else "NO")
            split = (f"{p['part_size']}: {' / '.join(str(n) for n in p['users_per_rank_two_process'])}"
                     if "part_size" in p else "not recorded")
            lines.append(f"| {label} (`{Path(p['checkpoint']).name}`) | {p['users']} | {split} | "
                         f"{p['seconds_one_process']:.0f} "
                         f"({p['users_per_s']['one_process']:.2f}) | {p['seconds_two_process']:.0f} "
                         f"({p['users_per_s']['two_process']:.2f}) | "
                         f"{ratio_cell(p, predict_ratio)} | {megabytes(peak['one_process'])} / "
                         f"{megabytes(peak['two_process'])} | {same} | {p['one_history_seconds']:.1f} | "
                         f"`{p.get('command', r.get('command'))}`, {p.get('date', r.get('date'))} |")
        lines += ["", "Times are whole commands (start, model load, prediction, merge). The two-process run's "
                  "memory is that of the command's process and Lightning's child, each holding the model.", ""]
    e = r.get("eval")
    if e:
        lines += [f"**Sharded evaluation** (`llmrec evaluate`, {e['samples']} test samples, seed {e['seed']}, "
                  f"`{Path(e['checkpoint']).name}`): 1 process {e['seconds']['one_process']:.0f} s, 2 processes "
                  f"{e['seconds']['two_process']:.0f} s; metrics.json equal without its timing keys: "
                  f"{'yes' if e['metrics_equal_without_timing'] else 'NO'}; scores.parquet rows equal: "
                  f"{'yes' if e['scores_rows_equal'] else 'NO'}, largest score difference "
                  f"{e['max_score_abs_diff']:.1e} (`eval_identical`: {str(r.get('eval_identical')).lower()}).", ""]
    return "\n".join(lines)


def replace(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}:START -->", f"<!-- {name}:END -->"
    if start not in text:
        raise SystemExit(f"the page has no {start} marker")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{body}{end}{rest.split(end, 1)[1]}"


def render(text: str) -> str:
    """`text` (a page of DOCUMENTS) with each section it holds rewritten from its results file, if that exists."""
    for name, file, section in (("SDPO-RESULTS", "sdpo.json", sdpo_section),
                                ("SERVING-RESULTS", "serving.json", serving_section),
                                ("FAIRNESS-RESULTS", "fairness.json", fairness_section),
                                ("DEMO-RESULTS", "demo.json", demo_section),
                                ("PRETRAINED-RESULTS", "pretrained.json", pretrained_section),
                                ("SCALE-RESULTS", "scale.json", scale_section)):
        path = RESULTS / file
        if path.is_file() and f"<!-- {name}:START -->" in text:
            text = replace(text, name, section(json.loads(path.read_text())))
    return text


def main() -> int:
    for page in DOCUMENTS:
        page.write_text(render(page.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
