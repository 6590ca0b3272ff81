#!/bin/bash
# usage: cmdworker.sh QUEUEFILE LOG [WAITPID] — runs one shell command per line of QUEUEFILE, in order
Q=$1; LOG=$2; W=$3
if [ -n "$W" ]; then while kill -0 "$W" 2>/dev/null; do sleep 5; done; fi
while true; do
  CMD=$(head -n1 "$Q" 2>/dev/null)
  [ -z "$CMD" ] && break
  sed -i 1d "$Q"
  echo "[$(date +%H:%M:%S)] \$ $CMD" >> "$LOG"
  bash -c "$CMD" >> "$LOG" 2>&1
done
echo "[$(date +%H:%M:%S)] queue empty" >> "$LOG"
