#!/bin/bash
# usage: worker.sh QUEUEFILE LOG — pops one job spec per line from QUEUEFILE and runs it (one at a time)
Q=$1; LOG=$2
while true; do
  JOB=$(head -n1 "$Q" 2>/dev/null)
  [ -z "$JOB" ] && break
  sed -i 1d "$Q"
  python experiments/bench_learning.py run $JOB >> "$LOG" 2>&1
done
echo "[$(date +%H:%M:%S)] queue empty" >> "$LOG"
