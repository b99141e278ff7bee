"""Does rounding alone cut on-policy tokens? The first mini-batch of a step, through verl's engine.

A step's first mini-batch is updated with the very weights the old-log-prob pass used, so every
entropy ratio rho = H_cur / H_old of it would be 1 in exact arithmetic. In practice the two
passes pack the sequences into different micro-batches (verl's dynamic batching fills a token
budget from the whole batch in the old-log-prob pass and from each mini-batch in the update:
other matrix shapes, other kernels, other rounding), so rho moves off 1 by the numerical noise of
the forward pass, and a token leaves ERC's band (0.95, 1.05) through rounding alone where that
noise is large enough.

This runs verl 0.9.1's engine TrainingWorker (FSDP2, CPU, tests/harness/training_worker.py) the
way verl's V1 trainer drives it: the old-log-prob pass over the whole batch, then the update's
first mini-batch, and reads the H_old and H_cur that reach dapo_erc's loss for that mini-batch.
Per setting it reports the first mini-batch's keep fraction at the paper's band, the fraction of
tokens with rho exactly 1, and |rho - 1| by decile of H_old (median, 99th percentile, largest).

Settings (each in its own process, so the platform and the thread pool are fresh):
- precision: float32, or bfloat16 (FSDP2 parameters and autocast in bf16, so the logits are bf16,
  as in a bf16 GPU run);
- packing: `verl` (dynamic batching with one token budget for both passes, as the recipes set it),
  or `same` (fixed micro-batches of the same sequences in both passes: the control);
- logits: `tiny` (the tests' tiny Qwen2 as initialised: logits near 0, entropies near log V) or
  `llm` (the same model with its output layer scaled so that the median top logit of the
  response positions is 20, the range of a trained LLM's confident tokens, where one bf16 step
  is 0.125; the scale is set from the fp32 model before any measurement).

    python benchmarks/on_policy_rounding.py                 # all settings, writes nothing
    python benchmarks/on_policy_rounding.py --out benchmarks/results/on_policy_rounding_cpu.md

No outcome is tuned for: the settings, seeds and sizes are fixed above and in the options.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HARNESS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests")
sys.path.insert(0, HARNESS_DIR)

LOW, HIGH = 0.95, 1.05  # the paper's band
TOP_LOGIT = 20.0  # median top logit of the `llm` setting
SETTINGS = [
    (precision, packing, logits)
    for logits in ("tiny", "llm")
    for precision in ("fp32", "bf16")
    for packing in ("verl", "same")
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="rollouts (seeds 0..N-1) per setting")
    p.add_argument("--bsz", type=int, default=64, help="sequences in the step's batch")
    p.add_argument("--mini", type=int, default=16, help="sequences per update mini-batch")
    p.add_argument("--prompt-len", type=int, default=24, help="longest prompt")
    p.add_argument("--response-len", type=int, default=96, help="longest response (responses are ragged)")
    p.add_argument("--budget", type=int, default=512, help="dynamic batching's token budget, both passes")
    p.add_argument("--micro", type=int, default=4, help="micro-batch size of the `same` packing")
    p.add_argument("--vocab", type=int, default=2048, help="vocabulary size of the tiny Qwen2")
    p.add_argument("--hidden", type=int, default=128, help="hidden size of the tiny Qwen2")
    p.add_argument("--layers", type=int, default=2, help="decoder layers")
    p.add_argument("--out", default=None, help="write the markdown report (and a .json beside it) here")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---- one setting, in a child process --------------------------------------------------------------


def _scale_output_layer(model_dir: str, out_dir: str, rollouts) -> float:
    """Copy of the model whose output layer is scaled so the median top logit of the response
    positions is TOP_LOGIT (fp32 forward); returns the factor."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tops = []
    with torch.no_grad():
        for batch, _ in rollouts:
            logits = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                position_ids=batch["position_ids"],
            ).logits
            P = batch["prompts"].shape[1]
            mask = batch["response_mask"].bool()
            tops.append(logits[:, P - 1 : -1].max(dim=-1).values[mask])
    factor = TOP_LOGIT / torch.cat(tops).median().item()
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return factor


def _first_mini_batch_entropies(worker, batch, advantages, mini):
    """(H_old, H_cur, response mask) of the tokens of the update's first mini-batch, as dapo_erc gets them."""
    import torch
    from harness import training_worker as tw
    from verl.trainer.ppo import core_algos

    seen, stepped = [], []
    real_loss = core_algos.POLICY_LOSS_REGISTRY["dapo_erc"]

    def spy(*args, entropy=None, old_entropy=None, **kwargs):
        if not stepped:
            mask = kwargs["response_mask"] if "response_mask" in kwargs else args[3]
            seen.append((old_entropy.detach().float(), entropy.detach().float(), mask.bool()))
        return real_loss(*args, entropy=entropy, old_entropy=old_entropy, **kwargs)

    real_step = worker.engine.optimizer_step

    def optimizer_step():
        stepped.append(True)
        return real_step()

    core_algos.POLICY_LOSS_REGISTRY["dapo_erc"] = spy
    worker.engine.optimizer_step = optimizer_step
    try:
        old_log_probs, old_entropy = tw.compute_old_log_prob(worker, batch, temperature=1.0)
        metrics = tw.update_actor(
            worker, batch, old_log_probs, old_entropy, advantages, ppo_mini_batch_size=mini, shuffle=False, raw=True
        )
    finally:
        core_algos.POLICY_LOSS_REGISTRY["dapo_erc"] = real_loss
    h_old = torch.cat([o[m] for o, _, m in seen])
    h_cur = torch.cat([c[m] for _, c, m in seen])
    return h_old, h_cur, float(metrics["actor/erc_keep_frac_first_mb"][0])


def run_child(args) -> dict:
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    import torch
    from harness import training_worker as tw

    precision, packing, logits = args.child.split(",")
    torch.manual_seed(0)
    rollouts = [
        tw.random_rollout(args.bsz, args.prompt_len, args.response_len, vocab_high=args.vocab, seed=seed)
        for seed in range(args.seeds)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = tw.tiny_qwen2(
            Path(tmp) / "model", vocab_size=args.vocab, hidden_size=args.hidden, layers=args.layers, seed=0
        )
        factor = 1.0
        if logits == "llm":
            factor = _scale_output_layer(model_dir, str(Path(tmp) / "llm"), rollouts)
            model_dir = str(Path(tmp) / "llm")
        if packing == "verl":
            sizes = dict(
                micro_batch_size=args.micro,  # unused with dynamic batching
                extra_actor={"use_dynamic_bsz": True, "ppo_max_token_len_per_gpu": args.budget},
            )
        else:
            sizes = dict(micro_batch_size=args.micro, infer_micro_batch_size=args.micro)
        h_old, h_cur, keep_first = [], [], []
        for batch, advantages in rollouts:
            worker = tw.build_actor_worker(
                model_dir,
                policy_loss={"_target_": "erc_verl.ERCPolicyLossConfig", "loss_mode": "dapo_erc"},
                dtype="bf16" if precision == "bf16" else "float32",
                ppo_mini_batch_size=args.mini,
                lr=1e-6,
                **sizes,
            )
            old, cur, keep = _first_mini_batch_entropies(worker, batch, advantages, args.mini)
            h_old.append(old)
            h_cur.append(cur)
            keep_first.append(keep)
            del worker
    h_old, h_cur = torch.cat(h_old).double(), torch.cat(h_cur).double()
    rho = (h_cur + 1e-8) / (h_old + 1e-8)
    dev = (rho - 1).abs()
    kept = ((rho > LOW) & (rho < HIGH)).double()
    edges = torch.quantile(h_old, torch.linspace(0, 1, 11, dtype=torch.float64))
    deciles = []
    for d in range(10):
        lo, hi = edges[d].item(), edges[d + 1].item()
        sel = (h_old >= lo) & ((h_old <= hi) if d == 9 else (h_old < hi))
        part = dev[sel]
        deciles.append(
            {
                "decile": d + 1,
                "h_old": [lo, hi],
                "tokens": int(sel.sum()),
                "median": part.median().item() if part.numel() else None,
                "p99": torch.quantile(part, 0.99).item() if part.numel() else None,
                "max": part.max().item() if part.numel() else None,
                "keep": kept[sel].mean().item() if part.numel() else None,
            }
        )
    return {
        "precision": precision,
        "packing": packing,
        "logits": logits,
        "output_layer_scale": factor,
        "tokens": int(rho.numel()),
        "keep_frac_first_mb": [round(k, 6) for k in keep_first],
        "keep_frac_tokens": kept.mean().item(),
        "rho_exactly_1": (rho == 1).double().mean().item(),
        "abs_rho_minus_1": {
            "median": dev.median().item(),
            "p99": torch.quantile(dev, 0.99).item(),
            "max": dev.max().item(),
        },
        "deciles": deciles,
    }


# ---- the driver ----------------------------------------------------------------------------------


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) < 1e-2 or abs(x) >= 1e3 else f"{x:.3f}"


def report(results: list[dict], args, took: float) -> str:
    machine = f"{os.cpu_count()}-core CPU machine ({platform.processor() or platform.machine()}), no GPU"
    lines = [
        "# On-policy rounding: the first mini-batch's entropy ratios through verl's engine",
        "",
        f"`python benchmarks/on_policy_rounding.py` ({' '.join(sys.argv[1:]) or 'defaults'}), {machine}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {took:.0f} s. verl 0.9.1 engine TrainingWorker (FSDP2, gloo), "
        f"tiny Qwen2 (hidden {args.hidden}, {args.layers} layers, vocabulary {args.vocab}); {args.seeds} rollouts of "
        f"{args.bsz} random sequences (prompts up to {args.prompt_len}, responses up to {args.response_len} tokens); "
        f"the update's first mini-batch of {args.mini} sequences. Packing `verl`: dynamic batching, token budget "
        f"{args.budget} in both passes; `same`: micro-batches of {args.micro} sequences in both. Band (0.95, 1.05).",
        "",
        "| logits | precision | packing | tokens | keep_frac_first_mb (per rollout) | rho == 1 exactly | "
        "median abs(rho - 1) | 99th pct | largest |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        a = r["abs_rho_minus_1"]
        lines.append(
            f"| {r['logits']} | {r['precision']} | {r['packing']} | {r['tokens']} | "
            f"{', '.join(_fmt(k) for k in r['keep_frac_first_mb'])} | {_fmt(r['rho_exactly_1'])} | "
            f"{_fmt(a['median'])} | {_fmt(a['p99'])} | {_fmt(a['max'])} |"
        )
    for r in results:
        if r["precision"] != "bf16" or r["packing"] != "verl":
            continue
        lines += [
            "",
            f"abs(rho - 1) by decile of H_old, `{r['logits']}` logits, bf16, `verl` packing"
            + (f" (output layer x{r['output_layer_scale']:.3g})" if r["logits"] == "llm" else "")
            + ":",
            "",
            "| decile | H_old range | tokens | median | 99th pct | largest | kept |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for d in r["deciles"]:
            lines.append(
                f"| {d['decile']} | {_fmt(d['h_old'][0])} - {_fmt(d['h_old'][1])} | {d['tokens']} | {_fmt(d['median'])} | "
                f"{_fmt(d['p99'])} | {_fmt(d['max'])} | {_fmt(d['keep'])} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(run_child(args)), flush=True)
        return 0
    t0 = time.time()
    sizes = ("seeds", "bsz", "mini", "prompt_len", "response_len", "budget", "micro", "vocab", "hidden", "layers")
    passed = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in sizes]
    results = []
    for setting in SETTINGS:
        cmd = [sys.executable, os.path.abspath(__file__), *passed, "--child", ",".join(setting)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not found:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
            raise SystemExit(f"setting {setting} failed (exit {proc.returncode})")
        results.append(json.loads(found[-1][len("RESULT ") :]))
        r = results[-1]
        print(
            f"{r['logits']:5s} {r['precision']} {r['packing']:5s} keep_first_mb {r['keep_frac_first_mb']} "
            f"rho==1 {r['rho_exactly_1']:.4f} |rho-1| p99 {r['abs_rho_minus_1']['p99']:.3g} "
            f"max {r['abs_rho_minus_1']['max']:.3g}",
            flush=True,
        )
    text = report(results, args, time.time() - t0)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
