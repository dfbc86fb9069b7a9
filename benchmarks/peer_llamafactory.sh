#!/usr/bin/env bash
# Run one SFT job in LLaMA-Factory (the peer) and print its figures, for side-by-side
# benchmarks (benchmarks/peer_bench.py). Derived from shared/bench/peer_llamafactory.sh,
# kept here so the benchmark does not need shared/ beside the repository.
#   peer_llamafactory.sh --install          install the peer, if missing, and exit
#   peer_llamafactory.sh JOB.yaml [OUT.json]
# JOB.yaml is a llamafactory-cli train config (model_name_or_path must be a local folder,
# dataset_dir a local folder with dataset_info.json; set report_to: none).
# LLaMA-Factory is installed once into its own virtual environment (it pins other
# transformers/peft/trl versions than finetui): $PEER_VENV, default /tmp/peer-llamafactory;
# the requirement is $PEER_REQUIREMENT, default llamafactory==0.9.5.
# Prints one JSON object: wall_s, peak_rss_kb, train_runtime_s, train_samples_per_second,
# train_loss, first_step_s (wall time from launch to the first logged step), exit_code.
set -euo pipefail
venv=${PEER_VENV:-/tmp/peer-llamafactory}
requirement=${PEER_REQUIREMENT:-llamafactory==0.9.5}
install() {
  if [ ! -x "$venv/bin/llamafactory-cli" ]; then
    echo "installing $requirement into $venv (once) ..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "$requirement" >&2
  fi
}
if [ "${1:-}" = "--install" ]; then
  install
  exit 0
fi
job=${1:?usage: peer_llamafactory.sh --install | JOB.yaml [OUT.json]}
out=${2:-}
install
log=$(mktemp); tlog=$(mktemp)
start=$(date +%s.%N)
set +e
( /usr/bin/time -v -o "$tlog" "$venv/bin/llamafactory-cli" train "$job" 2>&1 ) | while IFS= read -r line; do
  printf '%s\n' "$line" >> "$log"
  case "$line" in *"'loss'"*) [ -f "$log.first" ] || date +%s.%N > "$log.first";; esac
done
code=${PIPESTATUS[0]}
set -e
end=$(date +%s.%N)
python3 - "$log" "$tlog" "$start" "$end" "$code" "$log.first" "$out" <<'PY'
import json, re, sys, os, ast
log, tlog, start, end, code, first, out = sys.argv[1:8]
text = open(log, errors="replace").read()
res = {"wall_s": round(float(end) - float(start), 3), "exit_code": int(code)}
m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(tlog).read())
res["peak_rss_kb"] = int(m.group(1)) if m else None
for d in re.findall(r"\{'train_runtime'[^}]*\}", text):
    d = ast.literal_eval(d)
    res["train_runtime_s"] = float(d["train_runtime"])
    res["train_samples_per_second"] = float(d["train_samples_per_second"])
    res["train_loss"] = float(d["train_loss"])
res["first_step_s"] = round(float(open(first).read()) - float(start), 3) if os.path.exists(first) else None
print(json.dumps(res))
if out:
    json.dump(res, open(out, "w"))
PY
rm -f "$log" "$tlog" "$log.first"
