#!/usr/bin/env python3
"""Time model of a conversion spread over N nodes (docs/scaling.md).

Input: the converter's `--dry-run` output (one line per output file with its bytes) and a
per-thread rate measured by bench/bench_mpi.sh. The files are shared out as the converter does
(largest first onto the least-loaded node), then each node size N is bounded by:
  threads - the node's files over its worker threads (largest first onto the least-loaded thread),
            each thread at the per-thread rate; never below the node's largest file, which one thread
            writes front to back ("largest file" when that file is what decides);
  NIC     - the node's share of the bytes over its NIC, per direction (every byte it writes it
            also reads, through the same NIC in the other direction);
  fs      - all bytes read and written over the file system's aggregate bandwidth (read + write).
The estimate is the largest bound plus the planning time (every node plans for itself, in parallel).
Usage: scaling_model.py <dry-run-output | TOTAL_GB/SHARD_GB> <per-thread GB/s> [--threads T] [--nic GB/s]
       [--fs GB/s,...] [--plan seconds] [--nodes 8,32,128]
(TOTAL_GB/SHARD_GB, e.g. 688.6/5: an HF output of that many bytes in shards of that size.)
"""
import argparse
import re
import sys


def lpt(sizes, n):
    """Largest first onto the least-loaded node (ties: the lower node), as convert::split_by_bytes."""
    load = [0] * n
    count = [0] * n
    for s in sorted(sizes, reverse=True):  # a stable sort of equal sizes does not change the loads
        k = min(range(n), key=lambda i: (load[i], i))
        load[k] += s
        count[k] += 1
    return load, count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('dry_run')
    ap.add_argument('thread_rate', type=float, help='GB/s one worker thread converts (bytes written)')
    ap.add_argument('--threads', type=int, default=32, help='worker threads per node (--max_workers)')
    ap.add_argument('--nic', type=float, default=50.0, help='GB/s per direction per node (NDR 400 Gb/s: 50)')
    ap.add_argument('--fs', default='100,1000', help='file system aggregate GB/s (read + write), comma list')
    ap.add_argument('--plan', type=float, default=4.0, help='seconds of planning per node (cold dry run)')
    ap.add_argument('--nodes', default='8,32,128')
    a = ap.parse_args()
    sizes = []
    if '/' in a.dry_run and not a.dry_run.startswith('/') and a.dry_run.replace('/', '').replace('.', '').isdigit():
        total, shard = (float(x) * 1e9 for x in a.dry_run.split('/'))
        sizes = [int(shard)] * int(total // shard) + ([int(total % shard)] if total % shard else [])
    for line in (open(a.dry_run) if not sizes else []):
        m = re.match(r'\s+(\S+)\s+\d+ tensors\s+[\d.]+ MB \((\d+) bytes\)', line)
        if m:
            sizes.append(int(m.group(2)))
    if not sizes:
        sys.exit('no file lines in ' + a.dry_run)
    total = sum(sizes)
    print('%d files, %.1f GB, largest %.2f GB; per-thread %.2f GB/s, %d threads/node, NIC %.0f GB/s/direction'
          % (len(sizes), total / 1e9, max(sizes) / 1e9, a.thread_rate, a.threads, a.nic))
    print('%-6s %-8s %12s %9s %9s %9s %9s  %s' % ('nodes', 'fs GB/s', 'max share', 'threads s', 'NIC s', 'fs s',
                                                 'total s', 'bound'))
    for n in (int(x) for x in a.nodes.split(',')):
        shares = [[] for _ in range(n)]
        load = [0] * n
        for sz in sorted(sizes, reverse=True):
            k = min(range(n), key=lambda i: (load[i], i))
            load[k] += sz
            shares[k].append(sz)
        t_threads, largest_decides = 0.0, False
        for files in shares:
            tl, _ = lpt(files, a.threads)
            t = max(tl) / 1e9 / a.thread_rate if files else 0.0
            if t > t_threads:
                t_threads, largest_decides = t, max(tl) == max(files)
        t_nic = max(load) / 1e9 / a.nic
        for fs in (float(x) for x in a.fs.split(',')):
            t_fs = 2 * total / 1e9 / fs
            bounds = {('largest file' if largest_decides else 'node threads'): t_threads, 'node NIC': t_nic,
                      'file system': t_fs}
            which = max(bounds, key=bounds.get)
            print('%-6d %-8.0f %9.1f GB %9.1f %9.1f %9.1f %9.1f  %s (files per node %d-%d)'
                  % (n, fs, max(load) / 1e9, t_threads, t_nic, t_fs, a.plan + bounds[which], which,
                     min(len(x) for x in shares), max(len(x) for x in shares)))


if __name__ == '__main__':
    main()
