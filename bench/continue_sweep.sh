#!/usr/bin/env bash
# The continued-training recipe table of bench/RESULTS.md ("Incremental runs"): one variant per call, from day 1's
# model on day 2's data, its validation loss per language against day 1's (nats per token).
#   bash bench/continue_sweep.sh DAYS NAME ['TOML lines of [train]' ...]
# DAYS: the work folder of bench/incremental_days.sh (runs/day1: day 1; runs/day: day 2, rolled back to day 1's model
# in a copy). Examples: NAME r10_lr4e3 'replay_share = 0.1' 'replay_max = 0.1' 'continue_lr_scale = 1.0';
# NAME default (the defaults). Each variant trains in a copy of its own (~1 minute at 240 steps).
set -euo pipefail
DAYS=$1 NAME=$2; shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
X="$REPO/.venv/bin/xlmflow"
WORK="$DAYS/sweep" && mkdir -p "$WORK" && cd "$WORK"
if [ ! -d base ]; then cp -a "$DAYS/runs/day" base && "$X" rollback --run-dir base; fi
rm -rf "$NAME" && cp -a base "$NAME"
{ echo "[train]"; for line in "$@"; do echo "$line"; done; } > "$NAME.toml"
"$X" train --run-dir "$NAME" --config "$NAME.toml" --quiet > "$NAME.log" 2>&1 || { tail -20 "$NAME.log"; exit 1; }
"$REPO/.venv/bin/python" - "$DAYS/runs/day1" "$NAME" <<'PY'
import json, sys
day1, name = sys.argv[1:]
a = json.load(open(f"{day1}/train/summary.json"))["valid_loss"]
b = json.load(open(f"{name}/train/summary.json"))
t = json.load(open(f"{name}/train/_manifest.json"))["params"]["train"]
d = {k: round(b["valid_loss"][k] - a[k], 3) for k in sorted(a)}
worst = max(d, key=d.get)
print(name, f"replay {t['replay']:.0%} lr {t['lr']:g} steps {b['steps']}", "fr", d["fr"],
      "mean", round(sum(d.values()) / len(d), 3), "worst", worst, d[worst], "worse>0.02", sum(v > 0.02 for v in d.values()))
PY
