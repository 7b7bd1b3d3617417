#!/usr/bin/env bash
# The demo split into two days, side by side with a full rebuild of day 2's corpus (issue 21), in a fresh clone:
#   day 1: every demo file but libreoffice-help-fr, `xlmflow run --incremental`
#   day 2: that file added to the same source folder, `xlmflow run` (the run directory records incremental)
#   full:  a new run directory on day 2's corpus, `xlmflow run` (not incremental)
# then the checks (tokenizer sha256, every day-1 shard and clean file byte-identical) and the ratios: day 2's data
# stages against day 1's, the whole day 2 against the full rebuild.
#   bash bench/incremental_days.sh [WORK]      (default /tmp/xlmflow-days; ~25 minutes on 2 cores)
set -euo pipefail
M=${1:-/tmp/xlmflow-days}
REPO=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$M" && mkdir -p "$M/src" "$M/runs"
git clone -q "$REPO" "$M/repo" && cd "$M/repo"
python3 -m venv .venv && .venv/bin/pip install -q uv && .venv/bin/uv pip install -q -p .venv -e . 2>&1 | tail -2
cp data/demo/*.jsonl.zst "$M/src/" && mv "$M/src/libreoffice-help-fr.jsonl.zst" "$M/"
for r in day full; do .venv/bin/python -c "
from xlmflow.flows.config import PipelineConfig
from xlmflow.storage import RunDir, write_record
c = PipelineConfig.demo(); c.ingest.sources[0].path = '$M/src/*.jsonl.zst'
write_record(RunDir.of('$M/runs/$r'), c.model_dump(mode='json'))"; done
run() {  # run DIR LOG [FLAGS...]: the wall seconds
  local t0; t0=$(date +%s.%N)
  .venv/bin/xlmflow run --run-dir "$M/runs/$1" "${@:3}" > "$M/$2.log" 2>&1
  echo "$(date +%s.%N) - $t0" | bc
}
d1=$(run day day-1 --incremental); cp -a "$M/runs/day" "$M/runs/day1"
cp "$M/libreoffice-help-fr.jsonl.zst" "$M/src/"
.venv/bin/xlmflow status --run-dir "$M/runs/day" > "$M/status-before-day2.txt" 2>&1 || true
d2=$(run day day-2)
fl=$(run full full-2 --no-incremental)
data() { grep -E "^[0-9:]+ (ingest|langid|vocab|shard): finished in" "$1" | sed -E 's/.*finished in ([0-9.]+) s.*/\1/' | paste -sd+ | bc; }
.venv/bin/python - "$M" "$d1" "$d2" "$fl" "$(data "$M/day-1.log")" "$(data "$M/day-2.log")" "$(data "$M/full-2.log")" <<'PY'
import hashlib, json, sys
from pathlib import Path
m, d1, d2, fl, data1, data2, dataf = sys.argv[1], *map(float, sys.argv[2:])
day1, day = Path(m, "runs/day1"), Path(m, "runs/day")
sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
old = [p.relative_to(day1) for p in day1.glob("shard/*/*/*.parquet")] + [p.relative_to(day1) for p in day1.glob("langid/clean/**/*.parquet")]
same = sum((day / p).exists() and sha(day1 / p) == sha(day / p) for p in old)
summary = json.loads((day / "train/summary.json").read_text())
print(json.dumps({
    "tokenizer_unchanged": sha(day1 / "vocab/tokenizer.json") == sha(day / "vocab/tokenizer.json"),
    "day1_shard_and_clean_files_identical": f"{same}/{len(old)}",
    "continued_from": summary.get("continued_from", {}).get("version"), "steps": summary["steps"],
    "wall_s": {"day1": round(d1, 1), "day2": round(d2, 1), "full_rebuild_day2": round(fl, 1)},
    "data_stages_s": {"day1": data1, "day2": data2, "full_rebuild_day2": dataf},
    "day2_data_vs_day1_data": round(data2 / data1, 3), "day2_vs_full_rebuild": round(d2 / fl, 3),
    "regressions": json.loads((day / "evaluate/metrics.json").read_text())["previous_model"]["regressions"],
}, indent=1))
PY
