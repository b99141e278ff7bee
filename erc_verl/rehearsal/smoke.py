"""A recipe through verl's own trainer (`python -m verl.trainer.main_ppo`) on CPU, in minutes.

`scripts/launch.sh --smoke RECIPE [hydra overrides]` calls `main()` here. The recipe is composed
as it is (loss mode, ERC band, clip ratios, V1 trainer, dynamic sampling on `acc`, the paper's
reward, validation, file logger); `smoke_overrides()` lists the only things changed, each with
its reason, and the command prints them. What a CPU needs:

* a tiny Qwen2 built locally (no download) with a real `Qwen2Tokenizer` (byte-level BPE over the
  256 byte symbols, ChatML `<|im_start|>`/`<|im_end|>`, `<think>`/`</think>`), warmed up for a few
  seconds on two-digit addition written as `</think>ANSWER<|im_end|>`, so the reward's rules
  (`</think>` closed, math_verify on what follows) apply and rewards vary within a group, which
  DAPO dynamic sampling on `acc` needs to fill a batch;
* train/val parquet in `erc-verl prepare-data`'s row layout (erc_verl/repro/data.py);
* the `hf` CPU rollout backend (erc_verl/cpu/rollout.py) and the CPU platform (VERL_PLATFORM=cpu);
* 1 node, 1 worker, Ulysses 1, TP 1, FSDP2 in fp32, no offload, short lengths, 8 prompts x 4
  responses with 4 mini-batches per step, 3 steps, validation before training and at the end,
  a checkpoint at step 2, logger [console,file].

Everything lands in a fresh `runs/smoke/RECIPE/` (removed first: verl would otherwise resume from
its last checkpoint): `logs/metrics-*.jsonl` (verl's file logger; `erc-verl table/plot` read it)
and `global_step_*/`. The warmed-up model and the data are cached in `runs/smoke/.cache/`.

Python API (the demo reuses it): `prepare_assets()`, `build_smoke()` -> `SmokePlan`,
`run_main_ppo(plan)`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = ROOT / "recipes"
DEFAULT_OUT = Path("runs") / "smoke"
POLL_S = "0.2"

# --- the tiny model and its task ------------------------------------------------------------

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# DeepSeek-R1-Distill style: the template opens the think block, the model closes it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


@dataclass(frozen=True)
class ModelSpec:
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    # One-digit sums: a few seconds of SFT teach the format (`</think>N<|im_end|>`) and get
    # some answers right (about 1 in 7 at T=1), so about a third of the 4-response groups are
    # mixed and dynamic sampling fills a batch quickly.
    max_operand: int = 5
    sft_steps: int = 60
    sft_batch_size: int = 32
    sft_lr: float = 1e-2
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha1(json.dumps(self.__dict__, sort_keys=True).encode()).hexdigest()[:10]


def build_tokenizer():
    """A genuine Qwen2Tokenizer: byte-level BPE with no merges (one token per byte) + ChatML."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {tok: i for i, tok in enumerate(SPECIAL)}
    for ch in bytes_to_unicode().values():
        vocab.setdefault(ch, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab, merges=[], unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL[1:])})
    # Plain (not special) added tokens: skip_special_tokens keeps them, so the reward sees </think>.
    tok.add_tokens([THINK_OPEN, THINK_CLOSE])
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_problem(rng: random.Random, max_operand: int) -> tuple[str, str]:
    a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
    return f"{a}+{b}", str(a + b)


def prompt_ids(tokenizer, question: str) -> list[int]:
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
    )
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def response_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer.encode(THINK_CLOSE + answer, add_special_tokens=False) + [tokenizer.eos_token_id]


def build_model(model_dir: Path, spec: ModelSpec = ModelSpec(), log=print) -> dict:
    """Save a tiny Qwen2 + tokenizer to model_dir, warmed up on addition (plain torch SFT)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=2 * spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        use_cache=True,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    model.train()
    rng = random.Random(spec.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.sft_lr, weight_decay=0.0)
    pad = tok.pad_token_id
    t0, loss = time.time(), None
    for step in range(spec.sft_steps):
        rows = []
        for _ in range(spec.sft_batch_size):
            q, a = make_problem(rng, spec.max_operand)
            rows.append((prompt_ids(tok, q), response_ids(tok, a)))
        width = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attn = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (p, r) in enumerate(rows):
            seq = p + r
            ids[i, width - len(seq) :] = torch.tensor(seq)
            attn[i, width - len(seq) :] = 1
            labels[i, width - len(r) :] = torch.tensor(r)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        loss = model(input_ids=ids, attention_mask=attn, position_ids=pos, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    info = {"sft_steps": spec.sft_steps, "sft_final_loss": float(loss.item()) if loss is not None else None,
            "sft_s": round(time.time() - t0, 1)}
    (model_dir / "erc_verl_smoke.json").write_text(json.dumps({"spec": spec.__dict__, **info}, indent=1))
    loss_text = f"{info['sft_final_loss']:.3f}" if info["sft_final_loss"] is not None else "-"
    log(f"[smoke] tiny Qwen2 warmed up: {spec.sft_steps} SFT steps, loss {loss_text}, {info['sft_s']}s")
    return info


def write_data(data_dir: Path, spec: ModelSpec = ModelSpec(), n_train: int = 512, n_val: int = 16) -> dict:
    """Addition prompts as verl RL parquet, in `erc-verl prepare-data`'s row layout."""
    from erc_verl.repro.data import SourceSpec, convert_row, write_parquet

    data_dir = Path(data_dir)
    out = {}
    for split, name, n, seed in (("train", "arith_train", n_train, 11), ("test", "arith", n_val, 12)):
        rng = random.Random(spec.seed * 1000 + seed)
        src = SourceSpec(name, split, None, split, None, ("problem",), ("answer",))
        rows = []
        for i in range(n):
            q, a = make_problem(rng, spec.max_operand)
            rows.append(convert_row(src, {"problem": q, "answer": a, "id": i}, i, "erc_verl.rehearsal.smoke"))
        path = data_dir / f"{name}.parquet"
        write_parquet(rows, path)
        out[split] = path
    return out


def prepare_assets(cache_dir: Path, spec: ModelSpec = ModelSpec(), log=print) -> tuple[Path, dict]:
    """(model folder, {"train": parquet, "test": parquet}), built once per spec and cached."""
    cache_dir = Path(cache_dir) / f"model-{spec.key()}"
    model_dir, data_dir = cache_dir / "model", cache_dir / "data"
    if not (model_dir / "erc_verl_smoke.json").exists():
        tmp = cache_dir.with_name(cache_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build_model(tmp / "model", spec, log=log)
        write_data(tmp / "data", spec)
        shutil.rmtree(cache_dir, ignore_errors=True)
        tmp.rename(cache_dir)
    elif not (data_dir / "arith.parquet").exists():
        write_data(data_dir, spec)
    return model_dir, {"train": data_dir / "arith_train.parquet", "test": data_dir / "arith.parquet"}


# --- the overrides ------------------------------------------------------------------------


def smoke_overrides(model_dir: Path, data: dict, run_dir: Path, file_log: Path, steps: int = 3) -> list[tuple[str, str]]:
    """(override, reason) pairs: everything the smoke run changes in a recipe."""
    A, R, F = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.actor.fsdp_config"
    env = "ray_kwargs.ray_init.runtime_env.env_vars"
    return [
        # model and data
        (f"actor_rollout_ref.model.path={model_dir}", "tiny Qwen2 built and warmed up locally"),
        (f"data.train_files=['{data['train']}']", "addition prompts (prepare-data layout)"),
        (f"data.val_files=['{data['test']}']", "addition prompts, data_source=arith"),
        ("data.max_prompt_length=32", "short lengths"),
        ("data.max_response_length=8", "short lengths"),
        ("data.train_batch_size=8", "small batch"),
        ("data.gen_batch_size=8", "small batch (V1 with filter_groups uses 1 anyway)"),
        ("data.dataloader_num_workers=0", "2-core machine"),
        ("reward.num_workers=1", "2-core machine (each reward worker is a process)"),
        ("actor_rollout_ref.model.enable_gradient_checkpointing=false", "tiny model"),
        ("+actor_rollout_ref.model.override_config.attn_implementation=sdpa", "CPU attention"),
        # rollout
        (f"{R}.name=hf", "CPU rollout backend (erc_verl/cpu/rollout.py)"),
        (f"{R}.tensor_model_parallel_size=1", "TP 1"),
        (f"{R}.n=4", "4 responses per prompt"),
        (f"{R}.val_kwargs.n=2", "2 samples per validation prompt"),
        (f"{R}.agent.num_workers=1", "2-core machine"),
        (f"{R}.prompt_length=32", "short lengths"),
        (f"{R}.response_length=8", "short lengths"),
        # actor
        (f"{A}.strategy=fsdp2", "FSDP1 syncs module states on a GPU"),
        (f"{F}.strategy=fsdp2", "FSDP1 syncs module states on a GPU"),
        (f"{A}.ppo_mini_batch_size=2", "4 mini-batches per step, so the ERC band sees a moving policy"),
        (f"{A}.ulysses_sequence_parallel_size=1", "one process"),
        (f"{F}.ulysses_sequence_parallel_size=1", "one process"),
        (f"{F}.param_offload=false", "no offload on CPU"),
        (f"{F}.optimizer_offload=false", "no offload on CPU"),
        (f"{F}.model_dtype=fp32", "CPU: fp32"),
        (f"{F}.dtype=float32", "CPU: fp32"),
        (f"+{F}.mixed_precision.param_dtype=fp32", "CPU: fp32"),
        (f"+{F}.mixed_precision.reduce_dtype=fp32", "CPU: fp32"),
        (f"+{F}.mixed_precision.buffer_dtype=fp32", "CPU: fp32"),
        (f"{A}.use_torch_compile=false", "no compiler on CPU"),
        (f"{F}.use_torch_compile=false", "no compiler on CPU"),
        (f"{A}.optim.lr=0.002", "tiny model, 3 steps: a step size that moves the entropy ratio"),
        (f"{A}.optim.lr_warmup_steps=0", "3 steps only"),
        # trainer
        ("trainer.device=cpu", "CPU"),
        ("trainer.nnodes=1", "1 node"),
        ("trainer.n_gpus_per_node=1", "1 worker process"),
        (f"trainer.total_training_steps={steps}", f"{steps} training steps"),
        (f"trainer.test_freq={steps}", "validation before training and at the end"),
        ("trainer.save_freq=2", "a checkpoint at step 2"),
        ("trainer.logger=[console,file]", "no wandb"),
        (f"trainer.default_local_dir={run_dir}", "runs/smoke/RECIPE"),
        (f"hydra.run.dir={run_dir}/hydra", "Hydra's own files in the run folder, not ./outputs"),
        ("algorithm.filter_groups.max_num_gen_batches=10", "fail, not spin, if every group is filtered"),
        # Ray and TransferQueue on a small machine
        ("ray_kwargs.ray_init.num_cpus=16", "logical CPUs for Ray's actors (TransferQueue takes some)"),
        ("+ray_kwargs.ray_init.include_dashboard=false", "2-core machine"),
        ("transfer_queue.backend.SimpleStorage.num_data_storage_units=1", "each unit holds a Ray CPU"),
        (f"++{env}.VERL_PLATFORM=cpu", "CPU platform in every worker"),
        (f"++{env}.VERL_FILE_LOGGER_PATH={file_log}", "file log in the run folder"),
        (f"++{env}.ERC_VERL_REPLAY_POLL_S='{POLL_S}'", "replay buffer polls every 0.2 s, not 2 s (steps are short)"),
    ]


@dataclass
class SmokePlan:
    recipe: str
    run_dir: Path
    file_log: Path
    cmd: list[str]
    env: dict[str, str]
    overrides: list[tuple[str, str]] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"# smoke run of recipes/{self.recipe}.yaml through verl's main_ppo on CPU",
                 f"# run folder: {self.run_dir} (metrics: {self.file_log})",
                 "# overrides (everything else is the recipe's):"]
        width = min(64, max((len(o) for o, _ in self.overrides), default=0))
        for o, why in self.overrides:
            lines.append(f"#   {o.ljust(width)}  # {why}" if len(o) <= width else f"#   {o}\n#   {'':{width}}  # {why}")
        if self.extra:
            lines.append("# your overrides (applied last):")
            lines += [f"#   {o}" for o in self.extra]
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if k in _SHOWN_ENV)
        lines.append(f"{env} \\\n  " + " ".join(shlex.quote(c) for c in self.cmd))
        return "\n".join(lines)


_SHOWN_ENV = ("VERL_PLATFORM", "VERL_USE_EXTERNAL_MODULES", "VERL_FILE_LOGGER_PATH")


SMOKE_MARKER = "erc_verl_smoke_run.json"


def build_smoke(
    recipe: str,
    out_dir: str | os.PathLike = DEFAULT_OUT,
    extra_overrides: list[str] | tuple[str, ...] = (),
    *,
    steps: int = 3,
    spec: ModelSpec = ModelSpec(),
    python: str | None = None,
    recipes_dir: str | os.PathLike = RECIPES_DIR,
    fresh: bool = True,
    log=print,
) -> SmokePlan:
    """Prepare model/data and a fresh run folder; return the main_ppo command and environment."""
    recipe = recipe[:-5] if recipe.endswith(".yaml") else recipe
    recipes_dir = Path(recipes_dir).resolve()
    if not (recipes_dir / f"{recipe}.yaml").exists():
        names = sorted(p.stem for p in recipes_dir.glob("*.yaml"))
        raise FileNotFoundError(f"no recipe {recipe!r} in {recipes_dir} (available: {' '.join(names)})")
    out_dir = Path(out_dir).resolve()
    run_dir = out_dir / recipe
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)  # verl resumes from the last global_step_* it finds
    model_dir, data = prepare_assets(out_dir / ".cache", spec, log=log)
    file_log = run_dir / "logs" / f"metrics-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    file_log.parent.mkdir(parents=True, exist_ok=True)
    # Tells `erc-verl table` this is a tiny CPU model, not the recipe's model (no paper column).
    (run_dir / SMOKE_MARKER).write_text(json.dumps({"recipe": recipe, "model": str(model_dir)}) + "\n")
    overrides = smoke_overrides(model_dir, data, run_dir, file_log, steps=steps)
    cmd = [
        python or sys.executable, "-m", "verl.trainer.main_ppo",
        "--config-path", str(recipes_dir), "--config-name", recipe,
        *[o for o, _ in overrides], *extra_overrides,
    ]
    env = dict(os.environ)
    external = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    if "erc_verl" not in external:
        external.append("erc_verl")
    env.update(
        VERL_PLATFORM="cpu",
        VERL_USE_EXTERNAL_MODULES=",".join(external),
        VERL_FILE_LOGGER_PATH=str(file_log),
        TOKENIZERS_PARALLELISM="false",
        ERC_VERL_REPLAY_POLL_S=POLL_S,
        RAY_DEDUP_LOGS="0",
        # the recipe's ${oc.env:...} values, should a user-level default be read before ours
        PYTHONUNBUFFERED="1",
    )
    env.pop("RAY_ADDRESS", None)  # always a private local Ray
    return SmokePlan(recipe, run_dir, file_log, cmd, env, overrides, list(extra_overrides))


def _stop(proc) -> None:
    """Stop main_ppo's process group: SIGINT first (its atexit shuts Ray down), then harder."""
    for sig, grace in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_main_ppo(
    plan: SmokePlan,
    *,
    timeout: float | None = None,
    capture: Path | None = None,
    on_line=None,
    env: dict | None = None,
) -> int | None:
    """Run the plan's main_ppo; returns its exit code, or None when `timeout` stopped it.

    capture: also write the command and its output there; on_line(line): called for every output
    line (both pipe the output; else it goes to this process's stdout). main_ppo runs in its own
    process group, and on a timeout, Ctrl-C or any error here the whole group is stopped, so no
    trainer or Ray cluster outlives the call. env: replaces plan.env.
    """
    piped = capture is not None or on_line is not None
    fh = None
    if capture is not None:
        capture.parent.mkdir(parents=True, exist_ok=True)
        fh = open(capture, "w")
        fh.write("$ " + " ".join(shlex.quote(c) for c in plan.cmd) + "\n")
    try:
        proc = subprocess.Popen(
            plan.cmd, env=plan.env if env is None else env, cwd=str(ROOT),
            stdout=subprocess.PIPE if piped else None, stderr=subprocess.STDOUT if piped else None,
            text=True, bufsize=1, start_new_session=True,
        )

        def pump() -> None:
            for line in proc.stdout:
                if fh is not None:
                    fh.write(line)
                if on_line is not None:
                    on_line(line)

        reader = threading.Thread(target=pump, daemon=True) if piped else None
        if reader is not None:
            reader.start()
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:  # Ctrl-C or any error here: never leave a trainer and its Ray cluster behind
            _stop(proc)
            raise
        if reader is not None:
            reader.join(timeout=10)
    finally:
        if fh is not None:
            fh.close()
    return rc


def read_file_log(path: Path) -> dict[int, dict]:
    """verl's file-logger JSONL as {step: metrics}; a step logged twice is merged."""
    steps: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps.setdefault(int(row["step"]), {}).update(row.get("data", {}))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="launch.sh --smoke",
        description="Run a recipe through verl's main_ppo on CPU with a tiny model (see erc_verl/rehearsal/smoke.py).",
    )
    parser.add_argument("recipe", help="a recipe name in recipes/ (e.g. dapo_erc_qwen1.5b)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, applied last")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="parent of the run folder (default runs/smoke)")
    parser.add_argument("--steps", type=int, default=3, help="training steps (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="prepare and print the command, run nothing")
    args = parser.parse_args(argv)
    t0 = time.time()
    try:
        plan = build_smoke(args.recipe, args.out, args.overrides, steps=args.steps)
    except FileNotFoundError as err:
        print(f"launch.sh --smoke: error: {err}", file=sys.stderr)
        return 2
    print(plan.describe(), flush=True)
    if args.dry_run:
        return 0
    rc = run_main_ppo(plan)
    took = time.time() - t0
    if rc == 0:
        print(f"[smoke] {plan.recipe}: done in {took:.0f}s. Metrics: {plan.file_log}\n"
              f"[smoke] erc-verl table {plan.run_dir}")
    else:
        print(f"[smoke] {plan.recipe}: main_ppo exited with {rc} after {took:.0f}s", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
