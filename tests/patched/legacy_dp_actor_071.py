"""ERC through verl 0.7.1's legacy FSDP actor (dp_actor.DataParallelPPOActor), patched tree.

usage: .venv-patched-0.7.1/bin/python legacy_dp_actor_071.py OUT.pt

Builds the actor the way 0.7.1's fsdp_workers does (the actor section of verl's own
ppo_trainer.yaml, converted with omega_conf_to_dataclass, which instantiates the
`erc_verl.ERCPolicyLossConfig` _target_), on a tiny Qwen2 made from a config, as a plain module
in a one-process gloo group. Each case runs compute_log_prob(calculate_entropy=True) (the
old-log-prob pass), keeps its entropy as `old_entropys` as the patched trainer does, then
update_policy. Results go to OUT.pt; tests/test_patches.py asserts on them.
"""

import os
import socket
import sys

import torch
import torch.distributed as dist

BSZ, PROMPT_LEN, RESPONSE_LEN, VOCAB = 8, 6, 12, 512
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"


def init_group():
    if dist.is_initialized():
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)


def tiny_qwen2(lm_head_scale: float):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).float()
    with torch.no_grad():
        # a random init is near-uniform over the vocabulary; a peaked head moves entropy visibly
        model.lm_head.weight.mul_(lm_head_scale)
    return model


def actor_config(policy_loss: dict, mini_batch: int, entropy_coeff: float = 0.0):
    import verl
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict
    from verl.utils.config import omega_conf_to_dataclass

    GlobalHydra.instance().clear()
    with initialize_config_dir(os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None):
        cfg = compose(config_name="ppo_trainer")
    actor = cfg.actor_rollout_ref.actor
    with open_dict(actor):
        actor.ppo_mini_batch_size = mini_batch
        actor.ppo_micro_batch_size_per_gpu = 2
        actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c = 0.2, 0.28, 10.0
        actor.entropy_coeff = entropy_coeff
        actor.use_torch_compile = False
        actor.use_remove_padding = False  # the padded path: flash-attn varlen is GPU-only
        actor.optim.lr = 1e-2
        actor.optim.weight_decay = 0.0
        actor.fsdp_config.dtype = "float32"
        actor.fsdp_config.use_torch_compile = False
        actor.policy_loss = {"_target_": ERC_TARGET, **policy_loss}
    # as fsdp_workers does before building DataParallelPPOActor
    return omega_conf_to_dataclass(actor)


def rollout():
    from tensordict import TensorDict
    from verl import DataProto

    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, VOCAB, (BSZ, PROMPT_LEN), generator=gen)
    responses = torch.randint(3, VOCAB, (BSZ, RESPONSE_LEN), generator=gen)
    response_mask = torch.ones(BSZ, RESPONSE_LEN, dtype=torch.long)
    for i in range(BSZ):  # right-padded responses of different lengths
        response_mask[i, RESPONSE_LEN - i :] = 0
    responses = responses * response_mask
    attention_mask = torch.cat([torch.ones(BSZ, PROMPT_LEN, dtype=torch.long), response_mask], dim=1)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    advantages = torch.randn(BSZ, 1, generator=gen).expand(BSZ, RESPONSE_LEN) * response_mask
    batch = TensorDict(
        {
            "prompts": prompts,
            "responses": responses,
            "input_ids": torch.cat([prompts, responses], dim=1),
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "response_mask": response_mask,
            "advantages": advantages.float(),
        },
        batch_size=[BSZ],
    )
    return DataProto(batch=batch, meta_info={"temperature": 1.0, "micro_batch_size": 4, "use_dynamic_bsz": False})


# Responses 0, 3, 4 and 5 are correct (summed token-level reward 1.0): micro-batches of 2 hold 1, 1, 2, 0
CORRECT = (0, 3, 4, 5)


def token_level_rewards(response_mask):
    rewards = torch.zeros(response_mask.shape, dtype=torch.float32)
    for i, length in enumerate(response_mask.sum(dim=1).tolist()):
        rewards[i, int(length) - 1] = 1.0 if i in CORRECT else -1.0
    return rewards


def reference_positive_nll(lm_head_scale, data):
    """The authors' term written out on a fresh copy of the model: per micro-batch of 2, the mean over
    its positive response tokens of -log p, times 1/gradient_accumulation (4 micro-batches per step).
    Returns the per-micro-batch values and the gradient of the step's sum."""
    model = tiny_qwen2(lm_head_scale)
    batch = data.batch
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).logits.float()
    logits = logits[:, -RESPONSE_LEN - 1 : -1]
    log_prob = torch.log_softmax(logits, dim=-1).gather(-1, batch["responses"].unsqueeze(-1)).squeeze(-1)
    mask = batch["response_mask"].bool()
    values, total = [], 0.0
    for start in range(0, BSZ, 2):
        rows = [i for i in (start, start + 1) if i in CORRECT]
        if not rows:
            values.append(0.0)
            continue
        term = -(log_prob[rows] * mask[rows]).sum() / mask[rows].sum()
        values.append(term.item())
        total = total + term / (BSZ // 2)
    total.backward()
    return values, {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def run_case(
    policy_loss, *, mini_batch=BSZ, entropy_coeff=0.0, lm_head_scale=30.0, old_entropy_scale=1.0, rewards=False
):
    import verl.utils.torch_functional as verl_F
    from verl.workers.actor.dp_actor import DataParallelPPOActor

    import erc_verl.entropy as erc_entropy

    config = actor_config(policy_loss, mini_batch, entropy_coeff)
    model = tiny_qwen2(lm_head_scale)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    actor = DataParallelPPOActor(config=config, actor_module=model, actor_optimizer=optimizer)

    data = rollout()
    if rewards:
        data.batch["token_level_rewards"] = token_level_rewards(data.batch["response_mask"])
    # which entropy function each pass uses, and whether autograd is on: erc_verl's (the one the
    # plugin registers with the patched tree) and verl's own
    erc_modes, verl_modes = [], []
    erc_fn, verl_fn = erc_entropy.entropy_from_logits, verl_F.entropy_from_logits

    def recording_erc(*args, **kwargs):
        erc_modes.append(torch.is_grad_enabled())
        return erc_fn(*args, **kwargs)

    def recording_verl(*args, **kwargs):
        verl_modes.append(torch.is_grad_enabled())
        return verl_fn(*args, **kwargs)

    erc_entropy.entropy_from_logits, verl_F.entropy_from_logits = recording_erc, recording_verl
    try:
        out = actor.compute_log_prob(data=data, calculate_entropy=True)
    finally:
        erc_entropy.entropy_from_logits, verl_F.entropy_from_logits = erc_fn, verl_fn
    old_pass = {"erc": list(erc_modes), "verl": list(verl_modes)}
    erc_modes.clear()
    verl_modes.clear()
    data.batch["old_log_probs"] = out["log_probs"]
    # what the patched trainer keeps (0002-ray_trainer-keep-the-old-policy-entropy...)
    data.batch["old_entropys"] = out["entropys"] * old_entropy_scale

    grads = []
    optimizer_step = actor._optimizer_step

    def recording_step():
        grads.append({k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None})
        return optimizer_step()

    actor._optimizer_step = recording_step
    erc_entropy.entropy_from_logits, verl_F.entropy_from_logits = recording_erc, recording_verl
    before = params(model)
    try:
        metrics = actor.update_policy(data)
    finally:
        erc_entropy.entropy_from_logits, verl_F.entropy_from_logits = erc_fn, verl_fn
    return {
        "policy_loss_config": type(config.policy_loss).__name__,
        "before": before,
        "after": params(model),
        "metrics": {k: (v if isinstance(v, float) else [float(x) for x in v]) for k, v in metrics.items()},
        # autograd on/off at each entropy computation of the update: erc_verl's function (the gate's)
        # and verl's own (entropy bonus); and which functions the old-log-prob pass used
        "entropy_grad_modes": erc_modes,
        "verl_entropy_grad_modes": verl_modes,
        "old_pass_entropy_modes": old_pass,
        "grads": grads,
        "reference_positive_nll": reference_positive_nll(lm_head_scale, data) if rewards else None,
    }


def engine_ppo_loss_refusal(policy_loss):
    """0.7.1's engine-worker ppo_loss must refuse a config that relies on erc_verl's extension (0005)."""
    from verl.workers.utils import losses

    config = actor_config(policy_loss, BSZ)
    mask = torch.ones(2, 3, dtype=torch.bool)
    data = {
        "dp_size": 1,
        "batch_num_tokens": 6,
        "global_batch_size": 2,
        "response_mask": mask,
        "old_log_probs": torch.zeros(2, 3),
        "advantages": torch.ones(2, 3),
    }
    losses.no_padding_2_padding = lambda tensor, data: tensor
    try:
        losses.ppo_loss(config, {"log_probs": torch.zeros(2, 3, requires_grad=True)}, data)
    except NotImplementedError as err:
        return str(err)
    return None


def main(out):
    init_group()
    import erc_verl

    results = {"plumbing": erc_verl.PLUMBING, "cases": {}}
    cases = {
        "vanilla": dict(policy_loss={"loss_mode": "vanilla"}),
        "open_band": dict(policy_loss={"loss_mode": "dapo_erc", "entropy_ratio_low": 0.5, "entropy_ratio_high": 2.0}),
        # old entropies x1.5: every ratio is about 2/3, outside a band this narrow
        "shut_band": dict(
            policy_loss={"loss_mode": "dapo_erc", "entropy_ratio_low": 0.999999, "entropy_ratio_high": 1.000001},
            old_entropy_scale=1.5,
        ),
        # four optimizer steps per batch: all but the first are off-policy
        "paper_band": dict(policy_loss={"loss_mode": "dapo_erc"}, mini_batch=2),
        "paper_band_gppo": dict(policy_loss={"loss_mode": "gppo_erc"}, mini_batch=2),
        "paper_band_erc_over_gppo": dict(policy_loss={"loss_mode": "erc", "erc_base_loss_mode": "gppo"}, mini_batch=2),
        "paper_band_entropy_bonus": dict(policy_loss={"loss_mode": "dapo_erc"}, mini_batch=2, entropy_coeff=0.01),
        "vanilla_monitor": dict(policy_loss={"loss_mode": "vanilla", "entropy_ratio_monitor": True}, mini_batch=2),
        # the authors' positive-sample NLL term (one optimizer step, so every micro-batch sees the start weights)
        "vanilla_rewards": dict(policy_loss={"loss_mode": "vanilla"}, rewards=True),
        "vanilla_positive_nll": dict(policy_loss={"loss_mode": "vanilla", "positive_nll_coeff": 0.1}, rewards=True),
        # ERC cuts every token: what is left is the NLL term's gradient
        "shut_band_positive_nll": dict(
            policy_loss={
                "loss_mode": "dapo_erc",
                "entropy_ratio_low": 0.999999,
                "entropy_ratio_high": 1.000001,
                "positive_nll_coeff": 0.1,
            },
            old_entropy_scale=1.5,
            rewards=True,
        ),
    }
    for name, kwargs in cases.items():
        try:
            results["cases"][name] = run_case(**kwargs)
        except Exception as err:
            results["cases"][name] = {"error": f"{type(err).__name__}: {err}"}
        shown = results["cases"][name].get("metrics", results["cases"][name])
        print(f"[legacy_dp_actor_071] {name}: {shown}", flush=True)
    results["engine_ppo_loss_refusal"] = engine_ppo_loss_refusal({"loss_mode": "dapo_erc"})
    nll_only = {"loss_mode": "vanilla", "positive_nll_coeff": 0.1}
    results["engine_ppo_loss_refusal_nll"] = engine_ppo_loss_refusal(nll_only)
    torch.save(results, out)


if __name__ == "__main__":
    main(sys.argv[1])
