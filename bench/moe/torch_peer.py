#!/usr/bin/env python3
"""A PyTorch standard expert-parallel MoE layer: the peer `occult bench layer` is compared with.

What DeepSpeed-MoE, Tutel and Megatron's all-to-all dispatcher do, written plainly in PyTorch
over gloo: every (token, expert) pair travels to the expert's rank as its own row
(all_to_all_single), each rank runs its SwiGLU experts, scales by the gate weight and sends the
rows back, and the home rank sums them. Backward goes through autograd with the reverse
all-to-all. Same shapes and the same imposed routing as `occult bench layer --routing-trace`
(rank r takes its contiguous share of the trace layer's tokens, cycled to --tokens-per-rank),
experts placed contiguously (expert e on rank floor(e*D/E)) unless --placement names a file.

Run (Debian's python3-torch; `scripts/bootstrap.sh --peer` installs it). The script starts its
own --ranks processes (one thread each), so it needs no launcher:
  python3 bench/moe/torch_peer.py --ranks 4 --experts 64 --top-k 6 --hidden 1024 --ffn 512 \
      --tokens-per-rank 1024 --routing-trace data/traces/dsv2lite-esft-intent.safetensors
Prints a table (medians over --iters after --warmup, slowest rank) or, with --json, one JSON
object; forward and forward+backward times, the bytes each all-to-all moved, and the latency of
decode-like forwards over 1, 8 and 64 tokens per rank (--decode-tokens; their plan included).
"""
import argparse
import json
import os
import struct
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F


def read_trace_layer(path, layer):
    """Top-k ids [N, k] and gate weights [N, k] of one layer of an occult trace file."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        base = 8 + header_len
        dtypes = {"U8": torch.uint8, "I32": torch.int32, "I64": torch.int64, "F16": torch.float16,
                  "F32": torch.float32}

        def tensor(name):
            if name not in header:
                sys.exit(f"torch_peer: {path}: no tensor {name} (layer {layer} of this trace?)")
            info = header[name]
            begin, end = info["data_offsets"]
            f.seek(base + begin)
            data = torch.frombuffer(bytearray(f.read(end - begin)), dtype=dtypes[info["dtype"]])
            return data.reshape(info["shape"])

        ids = tensor(f"layers.{layer}.topk_ids").to(torch.int64)
        name = f"layers.{layer}.topk_weights"
        weights = tensor(name).to(torch.float32) if name in header else torch.full(ids.shape, 1.0 / ids.shape[1])
        meta = header.get("__metadata__", {})
        return ids, weights, int(meta.get("num_experts", int(ids.max()) + 1))


class AllToAll(torch.autograd.Function):
    """all_to_all_single whose gradient is the reverse exchange."""

    @staticmethod
    def forward(ctx, x, send_splits, recv_splits):
        ctx.send_splits, ctx.recv_splits = send_splits, recv_splits
        out = x.new_empty((sum(recv_splits), x.shape[1]))
        dist.all_to_all_single(out, x.contiguous(), recv_splits, send_splits)
        return out

    @staticmethod
    def backward(ctx, grad):
        out = grad.new_empty((sum(ctx.send_splits), grad.shape[1]))
        dist.all_to_all_single(out, grad.contiguous(), ctx.send_splits, ctx.recv_splits)
        return out, None, None


def run_rank(rank, args):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(args.port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=args.ranks)
    D, E, k, H, Fw, T = args.ranks, args.experts, args.top_k, args.hidden, args.ffn, args.tokens_per_rank
    if args.placement:
        with open(args.placement) as f:
            expert_to_device = json.load(f)["layers"][args.layer]["expert_to_device"]
    else:
        expert_to_device = [e * D // E for e in range(E)]
    expert_to_device = torch.tensor(expert_to_device, dtype=torch.int64)
    local = [e for e in range(E) if expert_to_device[e] == rank]
    local_index = {e: i for i, e in enumerate(local)}

    if args.routing_trace:
        all_ids, all_weights, trace_experts = read_trace_layer(args.routing_trace, args.layer)
        if trace_experts != E or all_ids.shape[1] != k:
            sys.exit(f"torch_peer: the trace has E={trace_experts}, k={all_ids.shape[1]}; pass --experts/--top-k")
        n = all_ids.shape[0]
        lo, hi = n * rank // D, n * (rank + 1) // D
        rows = [lo + i % (hi - lo) for i in range(T)]
        ids = all_ids[rows]
        gates = all_weights[rows]
    else:
        g = torch.Generator().manual_seed(1234 + rank)
        ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
        gates = torch.softmax(torch.randn(T, k, generator=g), dim=1)

    g = torch.Generator().manual_seed(99)
    scale = 1.0 / H ** 0.5
    w1 = [(torch.rand(Fw, H, generator=g) * 2 - 1).mul_(scale).requires_grad_() for _ in local]
    w3 = [(torch.rand(Fw, H, generator=g) * 2 - 1).mul_(scale).requires_grad_() for _ in local]
    w2 = [(torch.rand(H, Fw, generator=g) * 2 - 1).mul_(scale).requires_grad_() for _ in local]
    x0 = torch.rand(T, H, generator=torch.Generator().manual_seed(7 + rank)) * 2 - 1
    dy = torch.rand(T, H, generator=torch.Generator().manual_seed(17 + rank)) * 2 - 1

    def build_layer(n):
        """The layer over the first n tokens: its plan (a count exchange and the routing
        metadata's all-to-all, as a serving system builds it per batch), then the closure."""
        flat_expert = ids[:n].reshape(-1)
        flat_token = torch.arange(n).repeat_interleave(k)
        flat_gate = gates[:n].reshape(-1)
        dest = expert_to_device[flat_expert]
        order = torch.argsort(dest * E + flat_expert, stable=True)
        send_splits = torch.bincount(dest, minlength=D)
        recv_splits = torch.empty_like(send_splits)
        dist.all_to_all_single(recv_splits, send_splits)
        send_splits, recv_splits = send_splits.tolist(), recv_splits.tolist()
        # The receiving side learns which local expert each row is for and its gate weight.
        meta = torch.stack([flat_expert[order].float(), flat_gate[order]], dim=1)
        recv_meta = AllToAll.apply(meta, send_splits, recv_splits)
        recv_expert = recv_meta[:, 0].long()
        recv_gate = recv_meta[:, 1:2]

        def layer(x):
            rows = AllToAll.apply(x[flat_token[order]], send_splits, recv_splits)
            out = torch.zeros_like(rows)
            for e in local:
                sel = (recv_expert == e).nonzero(as_tuple=True)[0]
                if sel.numel() == 0:
                    continue
                i = local_index[e]
                h = rows[sel]
                out = out.index_add(0, sel,
                                    F.linear(F.silu(F.linear(h, w1[i])) * F.linear(h, w3[i]), w2[i]) * recv_gate[sel])
            back = AllToAll.apply(out, recv_splits, send_splits)
            y = torch.zeros_like(x)
            return y.index_add(0, flat_token[order], back)

        return layer, send_splits

    # Routing is fixed, so the full batch's plan is built once and the timings below are the
    # layer's alone.
    layer, send_splits = build_layer(T)

    def timed(step):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        elapsed = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
        return elapsed.item()

    def forward():
        with torch.no_grad():
            layer(x0)

    def forward_backward():
        x = x0.clone().requires_grad_()
        layer(x).backward(dy)

    for _ in range(args.warmup):
        forward_backward()
    fwd = sorted(timed(forward) for _ in range(args.iters))
    fwdbwd = sorted(timed(forward_backward) for _ in range(args.iters))
    # Decode-like steps: a forward over the first n tokens, plan included (it is per batch).
    decode_ms = []
    for n in args.decode_tokens:
        m = min(n, T)

        def step():
            with torch.no_grad():
                build_layer(m)[0](x0[:m])

        times = [timed(step) for _ in range(args.warmup + max(args.iters, 5))][args.warmup:]
        decode_ms.append(1e3 * sorted(times)[len(times) // 2])
    row_bytes = H * 4
    sent = torch.tensor([sum(send_splits) * row_bytes, (sum(send_splits) - send_splits[rank]) * row_bytes],
                        dtype=torch.float64)
    dist.all_reduce(sent)
    result = {
        "peer": "pytorch-gloo-standard-ep",
        "torch": torch.__version__,
        "ranks": D, "experts": E, "top_k": k, "hidden": H, "ffn": Fw, "tokens_per_rank": T,
        "routing_trace": args.routing_trace, "layer": args.layer,
        "forward_ms": 1e3 * fwd[len(fwd) // 2],
        "forward_backward_ms": 1e3 * fwdbwd[len(fwdbwd) // 2],
        "dispatch_mb": sent[0].item() / 1e6,
        "dispatch_remote_mb": sent[1].item() / 1e6,
        "decode_tokens_per_rank": [min(n, T) for n in args.decode_tokens],
        "decode_ms": decode_ms,
        "iters": args.iters, "warmup": args.warmup,
    }
    if rank == 0:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{'peer':<26} {'fwd ms':>8} {'fwd+bwd ms':>11} {'dispatch MB':>12} {'remote MB':>10}")
            print("-" * 71)
            print(f"{result['peer']:<26} {result['forward_ms']:8.2f} {result['forward_backward_ms']:11.2f} "
                  f"{result['dispatch_mb']:12.2f} {result['dispatch_remote_mb']:10.2f}")
            for n, ms in zip(result["decode_tokens_per_rank"], decode_ms):
                print(f"decode-like forward, {n} tokens/rank (plan included): {ms:.2f} ms")
            print(f"medians of {args.iters} iterations after {args.warmup} warm-up, slowest rank; "
                  f"bytes summed over ranks (F32 rows, as each all-to-all moves them)")
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=6)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=512)
    p.add_argument("--tokens-per-rank", type=int, default=1024)
    p.add_argument("--routing-trace", default="")
    p.add_argument("--placement", default="")
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--port", type=int, default=29517)
    p.add_argument("--decode-tokens", default="1,8,64",
                   help="tokens per rank of the decode-like latency runs, comma-separated ('' = none)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    try:
        args.decode_tokens = [int(v) for v in args.decode_tokens.split(",") if v.strip()]
    except ValueError:
        sys.exit(f"torch_peer: --decode-tokens {args.decode_tokens!r}: expected comma-separated integers")
    if any(n < 1 for n in args.decode_tokens):
        sys.exit("torch_peer: --decode-tokens: every size must be >= 1")
    for name in ("ranks", "experts", "top_k", "hidden", "ffn", "tokens_per_rank", "iters"):
        if getattr(args, name) < 1:
            sys.exit(f"torch_peer: --{name.replace('_', '-')} must be >= 1")
    if args.top_k > args.experts:
        sys.exit("torch_peer: --top-k must be <= --experts")
    mp.spawn(run_rank, args=(args,), nprocs=args.ranks, join=True)


if __name__ == "__main__":
    main()
