"""The benchmark scripts run, at tiny sizes, and what they compare agrees.

Their timings are not checked here (they are printed figures, not test assertions); what is checked
is that each script still runs against the library, and the correctness claims they print: the
reuse of inversions gives exactly the naive way's STIR values, and bf16 stays within 0.01.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import REPO

BENCHMARKS = REPO / "benchmarks"


def run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_stir_speed_ways_give_the_same_stir():
    out = run("stir_speed.py", "--depth", "2", "--dim", "32", "--heads", "2", "--n-images", "8", "--steps", "5")
    rows = {line[:44].strip(): line[44:].split() for line in out.splitlines() if not line.startswith(("#", "way"))}
    assert set(rows) == {"naive: reference way, whole model per step", "naive, truncated to blocks 1..i",
                         "ours: invert_blocks (batched) + reuse", "ours: per-block invert_fn + reuse"}, out
    counts = {name: int(cols[0]) for name, cols in rows.items()}
    assert counts["naive, truncated to blocks 1..i"] == 2 * 2 * 2 and counts["ours: invert_blocks (batched) + reuse"] == 2 * 2
    for name, cols in rows.items():
        assert float(cols[-1]) <= 1e-12, (name, out)  # max |ΔSTIR| against the reference way
    assert re.search(r"required ≥ L = 2: (yes|NO)", out), out


def test_corruption_speed_lists_every_corruption_asked_for():
    out = run("corruptions_speed.py", "--image-size", "8", "--batch", "4", "--device", "cpu",
              "--only", "gaussian_noise", "frost", "jpeg_compression")
    rates = dict(re.findall(r"^(\w+)\s+([\d,]+)\s+[\d.]+$", out, re.M))
    assert set(rates) == {"gaussian_noise", "frost", "jpeg_compression"}, out
    assert all(int(v.replace(",", "")) > 0 for v in rates.values()), rates


def test_gpu_inversion_small_runs_on_cpu_and_bf16_agrees(tmp_path):
    run("gpu_inversion.py", "--small", "--device", "cpu", "--skip-compile", "--out", str(tmp_path))
    result = json.loads((tmp_path / "gpu_inversion.json").read_text())
    modes = {(r["what"].split(",")[0], r["mode"]) for r in result["throughput"]}
    assert modes == {(w, m) for w in ("invert_fn", "invert_blocks") for m in ("fp32", "tf32", "bf16")}, modes
    assert all(r["sample_steps_per_s"] > 0 for r in result["throughput"])
    agreement = result["stir_agreement"]
    assert agreement["bf16"]["max_abs_stir_diff"] <= 0.01 and agreement["bf16"]["within_0.01"]
    assert agreement["tf32"]["max_abs_stir_diff"] <= 0.01


def test_download_resume_sends_no_byte_twice():
    out = run("download_resume.py", "--mb", "2")
    row = next(line for line in out.splitlines() if line.startswith("stirflow.download.fetch"))
    requests, sent = row.split()[1:3]
    assert (int(requests), float(sent)) == (2, 1.0), out  # the cut answer, then the rest with Range


def test_paper_cost_prices_a_config_from_its_own_measurements(tmp_path):
    """At tiny size on the CPU: every stage of the smoke config is measured, priced and written;
    the table's total is the sum of its stages, and pricing again from the JSON gives the same."""
    out = run("paper_cost.py", "--config", "configs/smoke.yaml", "--device", "cpu", "--threads", "1",
              "--reps", "1", "--modes", "fp32", "--variants", "eager", "cuda_graphs", "--out", str(tmp_path))
    table = json.loads((tmp_path / "paper_cost_table.json").read_text())
    stages = {row["stage"]: row for row in table["stages"]}
    assert {"finetune", "invert", "stir_scores", "robustness"} <= set(stages), sorted(stages)
    assert all(row["gpu_hours"] > 0 for row in stages.values()), stages
    assert abs(table["total_gpu_hours"] - sum(row["gpu_hours"] for row in table["stages"])) < 1e-9
    again = run("paper_cost.py", "--config", "configs/smoke.yaml", "--from-json", str(tmp_path / "paper_cost.json"))
    assert "from measurements" in out and "from measurements" in again
    def stage_rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in {*stages, "total"}]

    assert len(stage_rows(out)) == len(stages) + 1 and stage_rows(again) == stage_rows(out), again
