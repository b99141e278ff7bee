"""The demo's runs: one `python -m verl.trainer.main_ppo` run per loss mode, through the smoke run's plan.

Each mode runs its recipe with the smoke run's CPU overrides (`smoke.build_smoke`) plus the demo's
own (batch shape, steps, seed, band) and the gate audit's environment: `VERL_USE_EXTERNAL_MODULES`
names `erc_verl.rehearsal.gate_audit`, so verl imports the spy in every Ray worker.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from . import smoke
from .overrides import CPU_PLUGINS, RUNTIME_ENV
from .ray_cluster import private_temp_dir

# loss mode -> (recipe, clip low, clip high). Every recipe: dual-clip 10, token-mean, GRPO,
# DAPO dynamic sampling on `acc`; baselines with entropy_ratio_monitor on.
MODES = {
    "vanilla": ("dapo_qwen1.5b", 0.2, 0.28),
    "dapo_erc": ("dapo_erc_qwen1.5b", 0.2, 0.28),
    "gppo": ("gppo_qwen1.5b", 0.2, 0.2),
    "gppo_erc": ("gppo_erc_qwen1.5b", 0.2, 0.2),
}
ERC_MODES = ("dapo_erc", "gppo_erc")
GATE_AUDIT_MODULE = "erc_verl.rehearsal.gate_audit"
GATE_AUDIT_ENV = "ERC_VERL_GATE_AUDIT"  # = gate_audit.ENV (not imported here: that module hooks verl)


def model_spec(args):
    return smoke.ModelSpec(
        hidden_size=args.hidden_size,
        layers=args.layers,
        heads=args.heads,
        kv_heads=max(1, args.heads // 2),
        max_operand=args.max_operand,
        sft_steps=args.sft_steps,
        sft_batch_size=args.sft_batch_size,
        sft_lr=args.sft_lr,
        seed=args.seed,
    )


def _quote(value) -> str:
    """A Hydra override value as a quoted string (paths, comma lists)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def demo_overrides(args, mode: str, audit_path: Path) -> list[str]:
    """What the demo sets on top of the smoke run's CPU overrides (applied last)."""
    A, R = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
    low, high = args.band
    mini = args.prompts_per_step // args.updates_per_batch
    return [
        f"hydra.run.dir={_quote(Path(audit_path).parent / 'hydra')}",  # not ./outputs/DATE/TIME
        f"data.train_batch_size={args.prompts_per_step}",
        f"data.gen_batch_size={args.prompts_per_step}",
        f"{R}.n={args.responses_per_prompt}",
        f"{R}.temperature={args.temperature}",
        f"{R}.response_length={args.max_new_tokens}",
        f"data.max_response_length={args.max_new_tokens}",
        f"{A}.ppo_mini_batch_size={mini}",
        f"{A}.use_dynamic_bsz=false",
        f"{A}.ppo_micro_batch_size_per_gpu={args.micro_batch_size}",
        f"{R}.log_prob_micro_batch_size_per_gpu={args.micro_batch_size}",
        f"{A}.optim.lr={args.lr}",
        f"{A}.policy_loss.entropy_ratio_low={low}",
        f"{A}.policy_loss.entropy_ratio_high={high}",
        f"data.seed={args.seed}",
        f"{R}.seed={args.seed}",
        f"{A}.fsdp_config.seed={args.seed}",
        "trainer.val_before_train=false",
        f"trainer.test_freq={args.steps}",
        "trainer.save_freq=-1",
        f"{RUNTIME_ENV}.VERL_USE_EXTERNAL_MODULES={_quote(','.join((*CPU_PLUGINS, GATE_AUDIT_MODULE)))}",
        f"++{RUNTIME_ENV}.{GATE_AUDIT_ENV}={_quote(audit_path)}",
        f"++{RUNTIME_ENV}.OMP_NUM_THREADS={_quote(args.threads)}",
        # Ray takes only strings here; an unquoted `false` would reach it as a bool.
        f"++{RUNTIME_ENV}.TOKENIZERS_PARALLELISM={_quote('false')}",
    ]


_CONSOLE_STEP = re.compile(r"(?:^|\s)(step:\d+ - .*)$")


def run_mode(args, mode: str, out: Path, spec, log) -> dict:
    """One main_ppo run of the mode's recipe; returns its plan, exit code, file log rows, audit."""
    recipe = MODES[mode][0]
    # out is this demo's own new folder, so OUT/RECIPE starts empty (verl would resume a checkpoint).
    audit_path = (out / recipe / "gate_audit.ndjson").resolve()  # = plan.run_dir below
    ray_temp = private_temp_dir()  # Ray's files where no other job attaches; removed below
    plan = smoke.build_smoke(
        recipe,
        out,
        demo_overrides(args, mode, audit_path),
        steps=args.steps,
        spec=spec,
        cache_dir=out.parent / ".cache",
        ray_temp_dir=ray_temp,
        # The light `hf` backend: two 20-step runs with vLLM's engine start-up would take the
        # demo past 5 minutes on an idle 2-core machine (docs/demo.md).
        layout=smoke.Layout(rollout="hf"),
        log=lambda *a, **k: None,
    )
    (plan.run_dir / "overrides.txt").write_text(plan.describe() + "\n")
    log_path = plan.run_dir / "main_ppo.log"
    env = dict(plan.env, OMP_NUM_THREADS=str(args.threads))
    log(
        f"[demo] {mode}: {recipe}.yaml through verl.trainer.main_ppo, {args.steps} steps "
        f"(command and overrides: {plan.run_dir / 'overrides.txt'}; output: {log_path})"
    )
    t0 = time.time()

    def on_line(line: str) -> None:
        # verl's console logger, printed by the TaskRunner actor: "(TaskRunnerV1 pid=..) step:N - key:value - ..."
        match = None if args.quiet else _CONSOLE_STEP.search(line)
        if match is None:
            return
        fields = dict(f.split(":", 1) for f in match.group(1).strip().split(" - ") if ":" in f)
        if "critic/score/mean" not in fields:
            return

        def num(key):
            try:
                return f"{float(fields[key]):.3f}"
            except (KeyError, ValueError):
                return "n/a"

        log(
            f"[{mode}] step {fields['step']}/{args.steps}  reward {num('critic/score/mean')}  "
            f"entropy {num('actor/entropy')}  keep {num('actor/erc_keep_frac')}  "
            f"grad_norm {num('actor/grad_norm')}  ({time.time() - t0:.0f}s)"
        )

    try:
        rc = smoke.run_main_ppo(plan, timeout=args.timeout, capture=log_path, on_line=on_line, env=env)
    finally:
        shutil.rmtree(ray_temp, ignore_errors=True)  # made by this run
    if rc is None:
        log(f"[demo] {mode}: main_ppo still running after --timeout {args.timeout:g}s; stopped it")
    wall = time.time() - t0
    steps = smoke.read_file_log(plan.file_log) if plan.file_log.exists() else {}
    from .gate_audit import read_audit

    audit = read_audit(audit_path)
    status = "ok" if rc == 0 else ("timed out" if rc is None else f"exit {rc}")
    log(f"[demo] {mode}: main_ppo {status} after {wall:.0f}s; file log {plan.file_log}")
    return {
        "mode": mode,
        "recipe": recipe,
        "plan": plan,
        "rc": rc,
        "wall_s": wall,
        "steps": steps,
        "audit": audit.get(mode, {}),
        "audit_path": audit_path,
        "log_path": log_path,
    }


def training_rows(run: dict) -> list[tuple[int, dict]]:
    """(step, metrics) of the training steps in verl's file log (validation-only rows dropped)."""
    return sorted((s, m) for s, m in run["steps"].items() if "critic/score/mean" in m)
