"""Which entropy reaches dapo_erc, and when it is taken, on verl 0.9.1's real engine (CPU, FSDP2/gloo).

1. With `use_torch_compile=True` (verl's default, what every recipe composes), packed (with and
   without verl's chunked entropy) and padded forward, both H_old (old-log-prob pass) and
   H_cur (update) that dapo_erc receives are values returned by
   erc_verl.entropy.entropy_from_logits, bit for bit; verl's own (compiled) entropy is never
   called; and on a peaked model verl's formula would have given other values.
2. Order of operations. erc_verl's wrapper of
   FSDPEngineWithLMHead.prepare_model_outputs (erc_verl/integration/verl_0_9_1.py) computes the
   gate entropy under torch.no_grad() as its first step and only then calls verl's
   prepare_model_outputs, which is where verl calls `logprobs_from_logits(...,
   inplace_backward=...)`; flash-attn's in-place cross-entropy backward overwrites the logits
   buffer with its gradient only later, in loss.backward(). The entropy has therefore been read
   (and is a separate float32 tensor without a graph) before anything may overwrite the logits,
   so verl's `calculate_entropy` can stay off and `inplace_backward` on. The test records the
   calls in order.
"""

import pytest
import torch
from harness import training_worker as engine_cpu  # sets VERL_PLATFORM=cpu before verl resolves its platform

pytestmark = pytest.mark.slow

BSZ, PROMPT_LEN, RESPONSE_LEN = 4, 6, 12
ERC_TARGET = "erc_verl.ERCPolicyLossConfig"


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory):
    """A tiny Qwen2 whose output head is sharpened: many positions with H < 1e-3, where verl's
    logsumexp(z) - sum(p z) in float32 and erc_verl's kernel give different numbers."""
    base = engine_cpu.tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"), vocab_size=512, hidden_size=64, layers=2)
    return engine_cpu.sharpened_qwen2(base, tmp_path_factory.mktemp("tiny_qwen2_peaked"), 400.0)


@pytest.fixture(scope="module")
def rollout():
    return engine_cpu.random_rollout(BSZ, PROMPT_LEN, RESPONSE_LEN)


def _build(model_dir, **kwargs):
    return engine_cpu.build_actor_worker(
        model_dir,
        return_config=True,
        policy_loss={"_target_": ERC_TARGET, "loss_mode": "dapo_erc"},
        micro_batch_size=2,
        ppo_mini_batch_size=BSZ,
        **kwargs,
    )


class Recorder:
    """Spies on erc_verl's entropy function (as the plumbing imported it), on verl's entropy
    functions, on verl's logprobs_from_logits (as transformer_impl imported it) and on dapo_erc."""

    def __init__(self, monkeypatch, engine):
        from verl.trainer.ppo import core_algos
        from verl.workers.engine.fsdp import transformer_impl

        from erc_verl.integration import verl_0_9_1 as plumbing

        self.events = []  # ("entropy" | "logprobs" | "verl_entropy" | "loss", details)
        self.ours = []  # (pass, logits detached copy, temperature, output)
        self.fed = []  # (H_cur, H_old, response_mask) per dapo_erc call
        self.passname = None
        import erc_verl.entropy as entropy_module

        real_entropy = entropy_module.entropy_from_logits
        real_logprobs = transformer_impl.logprobs_from_logits
        real_loss = core_algos.POLICY_LOSS_REGISTRY["dapo_erc"]
        real_verl_entropy = engine.compute_entropy_from_logits

        def entropy_spy(logits, *args, **kwargs):
            out = real_entropy(logits, *args, **kwargs)
            self.events.append(
                ("entropy", {"grad_enabled": torch.is_grad_enabled(), "ptr": logits.data_ptr(), "pass": self.passname})
            )
            self.ours.append((self.passname, logits.detach().clone(), kwargs.get("temperature"), out))
            return out

        def logprobs_spy(logits, labels, *args, **kwargs):
            self.events.append(
                (
                    "logprobs",
                    {
                        "inplace_backward": kwargs.get("inplace_backward", True if not args else args[0]),
                        "ptr": logits.data_ptr(),
                        "grad_enabled": torch.is_grad_enabled(),
                        "pass": self.passname,
                    },
                )
            )
            return real_logprobs(logits, labels, *args, **kwargs)

        def verl_entropy_spy(*args, **kwargs):
            self.events.append(("verl_entropy", {"pass": self.passname}))
            return real_verl_entropy(*args, **kwargs)

        def loss_spy(*args, entropy=None, old_entropy=None, **kwargs):
            self.events.append(("loss", {"pass": self.passname}))
            mask = kwargs.get("response_mask")
            self.fed.append(
                (entropy.detach().clone(), old_entropy.detach().clone(), None if mask is None else mask.bool())
            )
            return real_loss(*args, entropy=entropy, old_entropy=old_entropy, **kwargs)

        # The plumbing imports the function from erc_verl.entropy at call time (or at import).
        monkeypatch.setattr(entropy_module, "entropy_from_logits", entropy_spy)
        if hasattr(plumbing, "entropy_from_logits"):
            monkeypatch.setattr(plumbing, "entropy_from_logits", entropy_spy)
        monkeypatch.setattr(transformer_impl, "logprobs_from_logits", logprobs_spy)
        monkeypatch.setattr(engine, "compute_entropy_from_logits", verl_entropy_spy)
        monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "dapo_erc", loss_spy)

    def ours_values(self, passname):
        return torch.cat([out.reshape(-1) for p, _, _, out in self.ours if p == passname])


def _run(worker, recorder, rollout):
    batch, advantages = rollout
    recorder.passname = "old"
    old_log_probs, old_entropy = engine_cpu.compute_old_log_prob(worker, batch, temperature=1.0)
    recorder.passname = "update"
    metrics = engine_cpu.update_actor(
        worker, batch, old_log_probs, old_entropy, advantages, ppo_mini_batch_size=BSZ, temperature=1.0
    )
    return old_entropy, metrics


def _is_member(values: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    return torch.isin(values.reshape(-1), pool.reshape(-1))


@pytest.mark.parametrize(
    "chunking, remove_padding",
    [(False, True), (True, True), (False, False)],
    ids=["packed", "packed-chunked", "padded-forward"],
)
def test_compiled_engine_feeds_erc_verls_entropy_to_dapo_erc(
    peaked_model_dir, rollout, monkeypatch, chunking, remove_padding
):
    from verl.utils import torch_functional as verl_F

    worker, actor_config = _build(
        peaked_model_dir,
        use_torch_compile=True,
        use_remove_padding=remove_padding,
        extra_actor={"fsdp_config.entropy_from_logits_with_chunking": chunking},
    )
    engine = worker.engine
    # use_torch_compile reaches verl's engine: its entropy function is the torch.compile wrapper.
    assert actor_config.use_torch_compile and engine.engine_config.use_torch_compile
    assert engine.engine_config.entropy_from_logits_with_chunking is chunking
    assert engine.compute_entropy_from_logits not in (
        verl_F.entropy_from_logits,
        verl_F.entropy_from_logits_with_chunking,
    )
    assert hasattr(engine.compute_entropy_from_logits, "_torchdynamo_orig_callable")

    rec = Recorder(monkeypatch, engine)
    old_entropy, metrics = _run(worker, rec, rollout)

    assert not [e for e in rec.events if e[0] == "verl_entropy"], "verl's own entropy ran"
    calls = [(e[1]["pass"]) for e in rec.events if e[0] == "entropy"]
    assert calls.count("old") >= 2 and calls.count("update") == BSZ // 2  # one per micro-batch
    assert all(z.dim() == (2 if remove_padding else 3) for _, z, _, _ in rec.ours)  # the layout tested

    batch, _ = rollout
    response = batch["response_mask"].bool()
    assert (old_entropy[response] < 1e-3).sum() > 5  # the tokens where the formulas disagree

    # H_old: the old-log-prob pass returned erc_verl's values, and dapo_erc received those.
    assert _is_member(old_entropy[response], rec.ours_values("old")).all()
    assert len(rec.fed) == BSZ // 2
    fed_cur = torch.cat([cur[mask] for cur, _, mask in rec.fed])
    fed_old = torch.cat([old[mask] for _, old, mask in rec.fed])
    torch.testing.assert_close(torch.sort(fed_old).values, torch.sort(old_entropy[response]).values, rtol=0, atol=0)
    # H_cur: every value dapo_erc received is one erc_verl's function returned in the update.
    assert _is_member(fed_cur, rec.ours_values("update")).all()

    # Not vacuous: verl's (compiled or chunked) formula on the same logits gives other numbers.
    verl_values = torch.cat(
        [verl_F.entropy_from_logits(z).reshape(-1) for p, z, _, _ in rec.ours if p == "update"]  # T = 1
    )
    assert not _is_member(fed_cur, verl_values).all()
    # ... and erc_verl's values are the accurate ones (float64 of the same logits).
    ref = torch.cat([verl_F.entropy_from_logits(z.double()).reshape(-1) for p, z, _, _ in rec.ours if p == "update"])
    ours = rec.ours_values("update").double()
    ok = ref > 1e-6
    assert ((ours[ok] - ref[ok]).abs() / ref[ok]).max() < 1e-4
    assert metrics["actor/erc_keep_frac"] == pytest.approx(1.0, abs=1e-12)  # on-policy: every ratio 1
    assert metrics["actor/entropy_ratio_min"] == metrics["actor/entropy_ratio_max"] == 1.0


def test_gate_entropy_is_taken_before_the_in_place_log_prob_kernel(peaked_model_dir, rollout, monkeypatch):
    worker, _ = _build(peaked_model_dir, use_torch_compile=True)
    rec = Recorder(monkeypatch, worker.engine)
    _run(worker, rec, rollout)

    kinds = [e[0] for e in rec.events]
    assert "verl_entropy" not in kinds
    for passname in ("old", "update"):
        evs = [e for e in rec.events if e[0] in ("entropy", "logprobs") and e[1]["pass"] == passname]
        assert evs, passname
        # strictly alternating: each micro-batch's entropy first, then its log-prob kernel
        assert [e[0] for e in evs] == ["entropy", "logprobs"] * (len(evs) // 2), (passname, evs)
        for ent, lp in zip(evs[::2], evs[1::2], strict=False):
            assert ent[1]["grad_enabled"] is False  # under no_grad: no graph, no saved softmax
            # verl keeps flash-attn's in-place backward: calculate_entropy was switched off for it
            assert lp[1]["inplace_backward"] is True, (passname, lp)
            # same logits storage (temperature 1: verl does not rescale), read before the kernel
            assert ent[1]["ptr"] == lp[1]["ptr"]
        if passname == "update":
            assert all(lp[1]["grad_enabled"] for lp in evs[1::2])  # the graph the backward will use
    # the loss ran after both of its micro-batch's kernels
    update = [e[0] for e in rec.events if e[1].get("pass") == "update" and e[0] != "verl_entropy"]
    assert update == ["entropy", "logprobs", "loss"] * (BSZ // 2)
