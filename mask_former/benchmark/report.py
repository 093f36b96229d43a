# Copyright (c) MaskFormer-D2 contributors. Licensed under the Apache License, Version 2.0.
"""
The output of the benchmark (``tools/benchmark.py``): one markdown table per row, each
captioned with the machine it ran on (CPU capability, native oneDNN bfloat16, threads, torch
version, device), and the JSON file of all results, written atomically.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

from ..utils.atomic_io import atomic_write
from .worker import PARTS, POST

__all__ = [
    "caption",
    "evaluation_table",
    "inference_table",
    "mapper_table",
    "matcher_table",
    "onnx_table",
    "parts_table",
    "peaks_table",
    "train_table",
    "write_json",
]


def caption(env: Dict) -> str:
    """The machine line of every table."""
    device = env["device"] + (f" ({env['cuda_device']})" if env.get("cuda_device") else "")
    native = "yes" if env["onednn_bf16_native"] else "no"
    return (
        f"CPU capability {env['cpu_capability']}, oneDNN bfloat16 native: {native}, "
        f"{env['threads']} threads, torch {env['torch']}, device {device}, dtype {env['dtype']}"
    )


def markdown(
    title: str,
    env: Dict,
    header: Sequence[str],
    rows: List[Sequence[str]],
    notes: Sequence[str] = (),
) -> str:
    """A titled, captioned markdown table, with notes (e.g. failed cases) below it."""
    lines = [f"\n### {title}\n", f"_{caption(env)}_\n", "| " + " | ".join(header) + " |"]
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    lines += [""] + [f"- {note}" for note in notes] if notes else []
    return "\n".join(lines)


def _num(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.3f}"


def fmt_ms(stats: Dict) -> str:
    """A summary in ms as text: median (min-max)."""
    return f"{_num(stats['median_ms'])} ({_num(stats['min_ms'])}-{_num(stats['max_ms'])})"


def _ratio(numerator: Optional[float], denominator: Optional[float]) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def _memory(result: Dict) -> Optional[float]:
    """The peak compared across checkouts: CUDA allocator on a GPU, else process RSS (MiB)."""
    memory = result.get("memory", {})
    return memory.get("cuda_mb", memory.get("rss_mb"))


def _sides(entry: Dict) -> bool:
    return "baseline" in entry


def _notes(entries: List[Dict]) -> List[str]:
    """
    One note per failed run of a case (the last error line) and per run that did not load
    every shared weight (the checkouts' parameter names differ).
    """
    notes = []
    for entry in entries:
        name = f"{entry['case']['name']} {entry['case']['height']}x{entry['case']['width']}"
        for tag in ("current", "baseline"):
            result = entry.get(tag, {})
            weights = result.get("weights") or {}
            if "error" in result:
                notes.append(f"{name}: {tag} failed: {result['error']}")
            elif weights.get("missing") or weights.get("unexpected"):
                notes.append(
                    f"{name}: {tag} loaded the shared weights with {weights['missing']} missing "
                    f"and {weights['unexpected']} unexpected keys (its own random init for those)"
                )
    return notes


def peaks_table(peaks: List[Dict], env: Dict) -> str:
    """The measured machine peak."""
    rows = [[p["kernel"], p["dtype"], f"{p['gflop']:.1f}", fmt_ms(p), _num(p["gflops"])]
            for p in peaks]  # fmt: skip
    header = ["kernel", "dtype", "GFLOP", "ms median (min-max)", "GFLOP/s"]
    return markdown("Machine peak (2 FLOPs per multiply-accumulate)", env, header, rows)


def inference_table(entries: List[Dict], env: Dict, title: str = "Inference latency") -> str:
    """Rows 1 and "variants": latency and images/s per model, size and batch size."""
    side = any(_sides(e) for e in entries)
    first = any(
        "first_call_s" in b for e in entries for b in e["current"].get("batches", {}).values()
    )
    header = ["model", "size", "batch", "ms median (min-max)", "images/s", "peak MiB"]
    header += ["first call s"] if first else []
    if side:
        header += ["baseline ms", "speed-up", "baseline MiB", "memory ratio", "same argmax"]
    rows = []
    for entry in entries:
        case, cur = entry["case"], entry["current"]
        size = f"{case['height']}x{case['width']}"
        for batch, stats in cur.get("batches", {}).items():
            row = [case["name"], size, batch, fmt_ms(stats), f"{stats['images_per_s']:.2f}"]
            row.append(_num(_memory(cur)))
            if first:
                row.append(f"{stats['first_call_s']:.1f}" if "first_call_s" in stats else "-")
            if side:
                base = entry["baseline"]
                base_stats = base.get("batches", {}).get(batch, {})
                same = (entry["agreement"] or {}).get("same_argmax", {}).get(batch)
                row += [
                    _num(base_stats.get("median_ms")),
                    _ratio(base_stats.get("median_ms"), stats["median_ms"]),
                    _num(_memory(base)),
                    _ratio(_memory(cur), _memory(base)),
                    "-" if same is None else f"{100 * same:.2f}%",
                ]
            rows.append(row)
    title += " (peak MiB: of the case's process, all its batch sizes)"
    return markdown(title, env, header, rows, _notes(entries))


def _best_peak(peaks: Optional[List[Dict]], dtype: str) -> Optional[float]:
    rates = [p["gflops"] for p in peaks or [] if p["dtype"] == dtype]
    rates = rates or [p["gflops"] for p in peaks or [] if p["dtype"] == "float32"]
    return max(rates) if rates else None


def _part_rows(entry: Dict, peak: Optional[float]) -> List[List[str]]:
    case, stats = entry["case"], entry["current"]["batches"]["1"]
    base = entry.get("baseline", {}).get("batches", {}).get("1", {})
    size = f"{case['height']}x{case['width']}"
    total_flops = sum(stats["flops"].values())
    rows = []
    for part in list(PARTS) + [POST, "total"]:
        part_stats = stats if part == "total" else stats["parts"].get(part)
        if part_stats is None:
            continue
        flops = total_flops if part == "total" else stats["flops"].get(part, 0)
        rate = flops / 1e9 / (part_stats["median_ms"] / 1000.0) if part_stats["median_ms"] else 0
        row = [case["name"], size, part, fmt_ms(part_stats)]
        row += [f"{100 * part_stats['median_ms'] / stats['median_ms']:.1f}%"]
        row += [f"{flops / 1e9:.1f}", _num(rate), f"{100 * rate / peak:.1f}%" if peak else "-"]
        if _sides(entry):
            base_stats = base if part == "total" else base.get("parts", {}).get(part, {})
            base_ms = base_stats.get("median_ms")
            row += [_num(base_ms), _ratio(base_ms, part_stats["median_ms"])]
        rows.append(row)
    return rows


def parts_table(entries: List[Dict], peaks: Optional[List[Dict]], env: Dict) -> str:
    """Row 6: time, share, FLOPs and achieved GFLOP/s of each part of a batch-1 inference."""
    peak = _best_peak(peaks, env["dtype"])
    side = any(_sides(e) for e in entries)
    header = ["model", "size", "part", "ms median (min-max)", "share", "GFLOP", "GFLOP/s"]
    header += ["of peak"]
    header += ["baseline ms", "speed-up"] if side else []
    rows = []
    for entry in entries:
        if "parts" in entry["current"].get("batches", {}).get("1", {}):
            rows += _part_rows(entry, peak)
    title = f"Inference time by part, batch 1 (peak: {_num(peak)} GFLOP/s, the best kernel)"
    return markdown(title, env, header, rows)


def train_table(entries: List[Dict], env: Dict) -> str:
    """Row 2: training iteration time and peak memory per (segments, loss) case."""
    side = any(_sides(e) for e in entries)
    header = ["loss", "segments", "step ms median (min-max)", "forward ms", "backward ms"]
    header += ["peak MiB"]
    if side:
        header += ["baseline ms", "speed-up", "baseline MiB", "memory ratio", "max loss rel diff"]
    rows = []
    for entry in entries:
        case, cur = entry["case"], entry["current"]
        loss = "full-res" if case["points"] == 0 else f"{case['points']} points"
        if "error" in cur:
            continue
        row = [loss, case["segments"], fmt_ms(cur["step"])]
        row += [_num(cur["forward"]["median_ms"]), _num(cur["backward"]["median_ms"])]
        row += [_num(_memory(cur))]
        if side:
            base, diff = entry["baseline"], (entry["agreement"] or {}).get("max_rel_diff")
            base_ms = base.get("step", {}).get("median_ms")
            row += [
                _num(base_ms),
                _ratio(base_ms, cur["step"]["median_ms"]),
                _num(_memory(base)),
                _ratio(_memory(cur), _memory(base)),
                "-" if diff is None else f"{diff:.1e}",
            ]
        rows.append(row)
    case = entries[0]["case"] if entries else {"batch": 2, "height": 512, "width": 512}
    title = (
        f"Training iteration (forward + backward), batch {case['batch']} at "
        f"{case['height']}x{case['width']} (peak MiB: of the case's process)"
    )
    return markdown(title, env, header, rows, _notes(entries))


def matcher_table(entries: List[Dict], env: Dict) -> str:
    """Row 3: Hungarian matcher time per image."""
    rows = [["grid 128x128" if e["num_points"] == 0 else f"{e['num_points']} points", fmt_ms(e)]
            for e in entries]  # fmt: skip
    title = "Hungarian matcher per image (Q=100, 150 classes, 24 segments of 512x512)"
    return markdown(title, env, ["mask cost on", "ms per image median (min-max)"], rows)


def mapper_table(entry: Dict, env: Dict) -> str:
    """Row 4: train mapper throughput on shapes train."""
    row = [entry["mapper"], entry["images"], fmt_ms(entry), f"{entry['images_per_s']:.1f}"]
    header = ["mapper", "images", "ms per image median (min-max)", "images/s"]
    return markdown("Train mapper on shapes train records", env, header, [row])


def evaluation_table(entries: List[Dict], env: Dict) -> str:
    """Row 5: evaluation throughput on shapes val."""
    rows = [[e["what"], e["images"], f"{e['median_ms'] / 1000:.1f}", f"{e['images_per_s']:.1f}"]
            for e in entries]  # fmt: skip
    title = "Evaluation on shapes val (shapes main config, random init)"
    return markdown(title, env, ["what", "images", "s", "images/s"], rows)


def write_json(results: Dict, path: str) -> None:
    """Write the results to ``path`` atomically (temporary file, then rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(results, f, indent=1)


def onnx_table(entries: List[Dict], env: Dict) -> str:
    """
    Row 7: latency of the ONNX graphs (torch.export-based and TorchScript-based exporters) in
    onnxruntime beside PyTorch's, with each graph's largest difference from PyTorch; a graph
    whose export failed is a note under the table.
    """
    rows, notes = [], []
    for e in entries:
        if "error" in e:
            notes.append(f"{e['runtime']}: the export failed: {e['error']}")
            continue
        diff = f"{e['max_diff']:.1e}" if "max_diff" in e else "-"
        rows.append([e["runtime"], "x".join(map(str, e["size"])), fmt_ms(e), diff])
    title = "R50 semantic, one image: onnxruntime vs PyTorch (same weights)"
    header = ["runtime", "size", "ms median (min-max)", "max diff vs PyTorch (relative)"]
    return markdown(title, env, header, rows, notes)
