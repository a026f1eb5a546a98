#!/usr/bin/env bash
# Samples a process's memory from /proc/PID/status until it exits: one line per sample,
# "seconds RssAnon_MB RssFile_MB VmHWM_MB" (MB = 1e6 bytes). RssAnon is the anonymous memory
# (heap, scratch buffers); RssFile the mapped file pages (memory-mapped sources: page cache the
# kernel can drop); VmHWM the peak resident set of both.
# Usage: bench/sample_memory.sh PID [interval-seconds]
pid=$1
dt=${2:-1}
t0=$(date +%s.%N)
while [[ -r /proc/$pid/status ]]; do
  line=$(awk '/^RssAnon:/{a=$2} /^RssFile:/{f=$2} /^VmHWM:/{h=$2} END{if (a != "") printf "%.1f %.1f %.1f", a*1.024/1000, f*1.024/1000, h*1.024/1000}' "/proc/$pid/status" 2>/dev/null)
  [[ -n $line ]] && echo "$(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf '%.1f') $line"
  sleep "$dt"
done
