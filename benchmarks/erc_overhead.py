"""What ERC costs over plain PPO in verl's real actor update: step time and peak memory.

Each variant (vanilla, dapo_erc, gppo_erc) runs in its own process, so allocator state and
peak-memory counters never leak between them; repeats alternate the order of variants so
drift on a shared machine hits all of them alike. Every process builds verl 0.9.1's engine
TrainingWorker (FSDP2) on a tiny Qwen2 with a large vocabulary, runs the old-log-prob pass
(with entropy, as verl's trainer always does), one warm-up update, then times `--steps`
updates. Peak memory is the process's peak resident set size during the timed updates
(Linux VmHWM, reset through /proc/self/clear_refs after the warm-up), or
torch.cuda.max_memory_allocated in GPU mode.

    python benchmarks/erc_overhead.py                 # CPU, defaults from the issue
    python benchmarks/erc_overhead.py --device cuda   # GPU mode (needs verl and a GPU)

The LAST line printed is: time_ratio=<dapo_erc/vanilla median step time> peak_mem_ratio=<...>
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# The engine harness lives in tests/harness (not part of the installed package).
HARNESS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
sys.path.insert(0, HARNESS_DIR)

VARIANTS = ("vanilla", "dapo_erc", "gppo_erc")
# Not a loss mode: `vanilla` with verl's own actor.calculate_entropy=True, i.e. the current
# entropy computed inside the autograd graph (what the authors' fork does). For comparison.
GRAPH_VARIANT = "vanilla_graph_entropy"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated loss modes, first is the baseline; also {GRAPH_VARIANT} (verl's in-graph entropy)",
    )
    p.add_argument("--repeats", type=int, default=3, help="processes per variant, order alternating")
    p.add_argument("--steps", type=int, default=3, help="timed update steps per process (median taken)")
    p.add_argument("--vocab", type=int, default=32000, help="vocabulary size (>= 32000 for the issue's target)")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Qwen2")
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--seqs", type=int, default=4, help="sequences per update (one micro-batch)")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (prompt + response)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per sequence")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cpu: gloo + CPU platform; cuda: nccl")
    p.add_argument("--dtype", default=None, help="param dtype: float32 (CPU default) or bfloat16 (GPU default)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each child (default: torch's)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rss_peak_reset():
    # Writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_child(args):
    # engine_cpu selects verl's CPU platform unless told otherwise.
    os.environ["VERL_PLATFORM"] = "cpu" if args.device == "cpu" else "nvidia"
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from harness import training_worker as engine_cpu

    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    graph = args.child == GRAPH_VARIANT
    worker = engine_cpu.build_actor_worker(
        args.model_dir,
        policy_loss={"_target_": "erc_verl.ERCPolicyLossConfig", "loss_mode": "vanilla" if graph else args.child},
        calculate_entropy=graph,
        micro_batch_size=args.seqs,
        ppo_mini_batch_size=args.seqs,
        lr=1e-6,
        dtype=dtype,
        device=args.device,
    )
    gen = torch.Generator().manual_seed(0)
    resp_len = args.seq_len - args.prompt_len
    prompts = torch.randint(3, args.vocab, (args.seqs, args.prompt_len), generator=gen)
    responses = torch.randint(3, args.vocab, (args.seqs, resp_len), generator=gen)
    batch = engine_cpu.make_batch(prompts, responses)
    advantages = torch.randn(args.seqs, 1, generator=gen).expand(args.seqs, resp_len).contiguous()
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)

    def step():
        t0 = time.perf_counter()
        metrics = engine_cpu.update_actor(
            worker, batch, old_log_probs, old_entropy, advantages, ppo_mini_batch_size=args.seqs, temperature=1.0
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, metrics

    step()  # warm-up: optimizer state, allocator pools
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        _rss_peak_reset()
    times, metrics = [], {}
    for _ in range(args.steps):
        dt, metrics = step()
        times.append(dt)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else _status_kb("VmHWM") * 1024
    out = {
        "variant": args.child,
        "step_times": times,
        "peak_bytes": peak,
        "erc_keep_frac": metrics.get("actor/erc_keep_frac"),
    }
    print("RESULT " + json.dumps(out), flush=True)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    variants = args.variants.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, VERL_PLATFORM="cpu") if args.device == "cpu" else dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [HARNESS_DIR, env.get("PYTHONPATH")]))
        # Build the model once, in a process of its own, so every variant loads the same weights.
        model_dir = os.path.join(tmp, "model")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from harness import training_worker as engine_cpu; "
                f"engine_cpu.tiny_qwen2(sys.argv[1], vocab_size={args.vocab}, hidden_size={args.hidden}, "
                f"layers={args.layers}, max_position_embeddings={max(1024, args.seq_len)})",
                model_dir,
            ],
            check=True,
            env=env,
        )
        results = {v: [] for v in variants}
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]
            for variant in order:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--model-dir", model_dir]
                for key in ("steps", "vocab", "seqs", "seq_len", "prompt_len", "device", "dtype", "threads"):
                    value = getattr(args, key)
                    if value is not None:
                        cmd += [f"--{key.replace('_', '-')}", str(value)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if proc.returncode != 0 or line is None:
                    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
                    raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
                res = json.loads(line[len("RESULT ") :])
                results[variant].append(res)
                print(
                    f"repeat {r} {variant:9s} step median {statistics.median(res['step_times']):.3f}s "
                    f"peak {res['peak_bytes'] / 2**20:.0f} MiB keep_frac {res['erc_keep_frac']}",
                    flush=True,
                )
    base = variants[0]
    summary = {}
    for v in variants:
        summary[v] = (
            statistics.median(t for res in results[v] for t in res["step_times"]),
            statistics.median(res["peak_bytes"] for res in results[v]),
        )
    print(
        f"\n| variant | median step (s) | peak {'GPU alloc' if args.device == 'cuda' else 'RSS'} (MiB) | time ratio | mem ratio |"
    )
    print("| --- | --- | --- | --- | --- |")
    for v, (t, m) in summary.items():
        print(f"| {v} | {t:.3f} | {m / 2**20:.0f} | {t / summary[base][0]:.3f} | {m / summary[base][1]:.3f} |")
    target = "dapo_erc" if "dapo_erc" in summary else variants[-1]
    print(
        f"time_ratio={summary[target][0] / summary[base][0]:.3f} "
        f"peak_mem_ratio={summary[target][1] / summary[base][1]:.3f}"
    )


if __name__ == "__main__":
    main()
