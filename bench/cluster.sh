#!/usr/bin/env bash
# Emulates a comm-bound cluster on one machine: runs an MPI command inside a fresh network
# namespace whose loopback is shaped by an htb class (netem and tbf are missing in this
# kernel; htb is there), with Open MPI forced onto TCP over that loopback.
#
#   bench/cluster.sh --bandwidth 2gbit -- mpirun -np 4 build/occult bench layer ...
#
# The command's `mpirun` gets `--mca btl tcp,self --mca btl_tcp_if_include lo` (plus
# --allow-run-as-root --oversubscribe) inserted right after it; other commands run as given.
# Shared-memory transports are disabled (btl tcp,self only) so every rank-to-rank byte crosses
# the shaped loopback. Needs root (ip netns, tc). Cleans up the namespace on any exit.
#
# Choosing the bandwidth: match the FLOP-per-byte balance of the cluster you want to model,
# not its absolute bandwidth. balance = per-device FLOP/s / per-device all-to-all bytes/s.
#   A6000 on PCIe 4.0 x16: ~150 TFLOP/s (bf16 tensor) / ~25 GB/s  = ~6000 FLOP/B
#   H100 SXM, NVLink (intra-node, 450 GB/s/dir): ~990 TFLOP/s / 450 GB/s = ~2200 FLOP/B
#   H100 across nodes, 400 Gb/s InfiniBand per GPU (50 GB/s): ~990 TFLOP/s / 50 GB/s = ~20000 FLOP/B
# Here each rank gets one CPU core worth G FLOP/s (measure it: `occult bench layer` prints the
# sgemm GFLOP/s per rank); all D ranks share the one shaped link, so each rank sees about
# bandwidth/D. Pick   bandwidth_bits = 8 * D * G / balance.
# Example: G = 30 GFLOP/s, D = 4, balance 6000 FLOP/B (A6000/PCIe): 8*4*30e9/6000 = 160 Mbit/s.
# With balance 20000 FLOP/B (H100 over IB): 48 Mbit/s.
set -euo pipefail

usage() {
  echo "usage: $0 --bandwidth RATE -- COMMAND..." >&2
  echo "  RATE: a tc rate (e.g. 2gbit, 500mbit, 160mbit)" >&2
  exit 2
}

bandwidth=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bandwidth) [[ $# -ge 2 ]] || usage; bandwidth="$2"; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
  esac
done
[[ -n "$bandwidth" && $# -gt 0 ]] || usage
[[ "$(id -u)" == 0 ]] || { echo "$0: needs root (ip netns, tc)" >&2; exit 1; }
command -v tc >/dev/null && command -v ip >/dev/null || { echo "$0: needs iproute2 (ip, tc)" >&2; exit 1; }

ns="occult-cluster-$$"
cleanup() { ip netns delete "$ns" 2>/dev/null || true; }
trap cleanup EXIT INT TERM

ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
# Every packet on lo goes through one htb class of the given rate (default class 10).
ip netns exec "$ns" tc qdisc add dev lo root handle 1: htb default 10
ip netns exec "$ns" tc class add dev lo parent 1: classid 1:10 htb rate "$bandwidth" ceil "$bandwidth"

# Insert the TCP-over-lo settings after the first word if the command is mpirun/mpiexec.
cmd=("$@")
case "$(basename "${cmd[0]}")" in
  mpirun|mpiexec)
    cmd=("${cmd[0]}" --allow-run-as-root --oversubscribe --mca btl tcp,self --mca btl_tcp_if_include lo
         --mca oob_tcp_if_include lo -x OPENBLAS_NUM_THREADS=1 "${cmd[@]:1}")
    ;;
esac
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OPENBLAS_NUM_THREADS=1
ip netns exec "$ns" "${cmd[@]}"
