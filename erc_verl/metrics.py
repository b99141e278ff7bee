"""Entropy-ratio statistics logged by every update that has both entropies.

Names (after verl's `actor/` prefix): erc_keep_frac, erc_keep_frac_first_mb, erc_clip_frac_low,
erc_clip_frac_high, entropy_ratio_mean, entropy_ratio_min, entropy_ratio_max.

Aggregation. verl 0.9.1's engine calls the loss once per micro-batch and then reduces each
metric over micro-batches and data-parallel ranks. A fraction must be weighted by tokens, not
averaged over micro-batches of different sizes, so when the global token count of the
mini-batch is known (`batch_num_tokens`, `dp_size`), each micro-batch reports its share
count * dp_size / batch_num_tokens as a SUM metric (verl averages SUM metrics over ranks, then
sums over micro-batches: sum of all counts / batch_num_tokens). min and max use MIN/MAX
aggregation. Without global counts (a direct call, or an actor that does not provide them)
plain floats for the micro-batch are returned, as verl's own loss functions do.

The keep fraction of a mini-batch is a ratio of token counts: with global counts each micro-batch
also reports its kept and response token counts (SUM), and `mini_batch_keep_fractions` (run on
the lists verl's TrainingWorker.train_mini_batch returns, one value per mini-batch) replaces the
summed shares with kept / response tokens, so a mini-batch that keeps every token logs exactly
1.0, and adds `erc_keep_frac_first_mb`, the keep fraction of the step's first mini-batch. That
mini-batch is updated with the weights the old-log-prob pass used, so on a synchronous run every
ratio is 1 up to numerical noise between the two passes (other micro-batch shapes, other kernels):
a value below 1 is that noise cutting tokens (docs/numerics.md, "Rounding check").
"""

import math

import torch

# What the loss reports per micro-batch (erc_keep_frac_first_mb is added per step, below).
METRIC_NAMES = (
    "actor/erc_keep_frac",
    "actor/erc_clip_frac_low",
    "actor/erc_clip_frac_high",
    "actor/entropy_ratio_mean",
    "actor/entropy_ratio_min",
    "actor/entropy_ratio_max",
)


KEEP_KEY = "actor/erc_keep_frac"
FIRST_MB_KEY = "actor/erc_keep_frac_first_mb"
# Per micro-batch counts behind KEEP_KEY, consumed by mini_batch_keep_fractions (never logged).
KEEP_COUNT_KEY = "actor/erc_keep_count"
TOKEN_COUNT_KEY = "actor/erc_response_tokens"


def mini_batch_keep_fractions(metrics: dict) -> dict:
    """The update's metrics ({name: one value per mini-batch}) with KEEP_KEY as kept / response
    tokens of each mini-batch, the count keys removed, and FIRST_MB_KEY: the first mini-batch's."""
    out = dict(metrics)
    kept, tokens = out.pop(KEEP_COUNT_KEY, None), out.pop(TOKEN_COUNT_KEY, None)
    fractions = out.get(KEEP_KEY)
    if not isinstance(fractions, list | tuple):  # not one value per mini-batch: left as it is
        return out
    fractions = list(fractions)
    if kept is not None and tokens is not None and len(kept) == len(tokens) == len(fractions):
        fractions = [
            float(k) / float(t) if float(t) > 0 else f for k, t, f in zip(kept, tokens, fractions, strict=True)
        ]
        out[KEEP_KEY] = fractions
    if fractions:
        out[FIRST_MB_KEY] = [fractions[0]]
    return out


@torch.no_grad()
def entropy_ratio_metrics(
    ratio: torch.Tensor,
    response_mask: torch.Tensor,
    low: float,
    high: float,
    keep: torch.Tensor | None = None,
    batch_num_tokens=None,
    dp_size: int = 1,
    **_unused,
) -> dict:
    """Keep / cut fractions and ratio statistics over the response tokens of one micro-batch.

    `ratio` is erc_verl.losses.entropy_ratio(...) (float32). `keep` defaults to the strict band
    test, so monitor mode reports exactly what ERC would keep.
    """
    mask = response_mask.bool()
    if keep is None:
        keep = mask & (ratio > low) & (ratio < high)
    ratio = ratio.float()
    # Everything reduced on the device, then ONE transfer to the host per micro-batch (a GPU
    # sync per .item() would stall the update seven times). float32 counts are exact up to 2^24
    # tokens per micro-batch. An empty micro-batch gives min +inf / max -inf (never wins).
    stats = torch.stack(
        [
            (keep & mask).sum().float(),
            (mask & (ratio <= low)).sum().float(),
            (mask & (ratio >= high)).sum().float(),
            torch.where(mask, ratio, 0.0).sum(),
            torch.where(mask, ratio, math.inf).amin() if ratio.numel() else ratio.new_tensor(math.inf),
            torch.where(mask, ratio, -math.inf).amax() if ratio.numel() else ratio.new_tensor(-math.inf),
            mask.sum().float(),
        ]
        # verl's global token count, when a tensor, rides along in the same transfer.
        + ([batch_num_tokens.to(ratio.device, torch.float32).reshape(())] if torch.is_tensor(batch_num_tokens) else [])
    ).tolist()
    keep_n, low_n, high_n, ratio_sum, ratio_min, ratio_max, n_local = stats[:7]
    sums = {
        "actor/erc_keep_frac": keep_n,
        "actor/erc_clip_frac_low": low_n,
        "actor/erc_clip_frac_high": high_n,
        "actor/entropy_ratio_mean": ratio_sum,
    }

    if batch_num_tokens is None:
        denom = max(n_local, 1.0)
        out = {key: value / denom for key, value in sums.items()}
        out["actor/entropy_ratio_min"] = ratio_min
        out["actor/entropy_ratio_max"] = ratio_max
        return out

    from verl.utils.metric import AggregationType, Metric

    total = stats[7] if torch.is_tensor(batch_num_tokens) else float(batch_num_tokens)
    scale = float(dp_size) / max(total, 1.0)
    out = {key: Metric(AggregationType.SUM, value * scale) for key, value in sums.items()}
    out["actor/entropy_ratio_min"] = Metric(AggregationType.MIN, ratio_min)
    out["actor/entropy_ratio_max"] = Metric(AggregationType.MAX, ratio_max)
    out[KEEP_COUNT_KEY] = Metric(AggregationType.SUM, keep_n)
    out[TOKEN_COUNT_KEY] = Metric(AggregationType.SUM, n_local)
    return out


class KeepFracFloor:
    """One warning when actor/erc_keep_frac stays below `floor` for `steps` logged steps in a row.

    The paper's runs keep about 80% of response tokens; a run that keeps far less for several
    steps moves its policy too far per mini-batch for the band (or H_old and H_cur disagree for
    another reason), and ERC then acts mostly as a token dropper. floor 0 disables the watch.
    """

    def __init__(self, floor: float, steps: int, low: float, high: float):
        self.floor, self.steps, self.low, self.high = float(floor), int(steps), float(low), float(high)
        self.run = []  # consecutive values below the floor
        self.warned = False

    def observe(self, keep_frac) -> str | None:
        if self.warned or self.floor <= 0 or keep_frac is None:
            return None
        value = float(keep_frac)
        self.run = self.run + [value] if value < self.floor else []
        if len(self.run) < self.steps:
            return None
        self.warned = True
        values = ", ".join(f"{v:.3f}" for v in self.run)
        return (
            f"erc_verl: actor/erc_keep_frac stayed below {self.floor:g} for {len(self.run)} steps in a row "
            f"({values}) with the entropy-ratio band ({self.low:g}, {self.high:g}); the paper's runs keep "
            "about 80%. The policy moves too far per mini-batch for this band: lower the learning rate or "
            "use fewer mini-batches per rollout batch (a wider band cut less but was not more stable in "
            "docs/erc-at-small-scale.md). policy_loss.keep_frac_floor=0 silences this."
        )


class NoPositiveResponses:
    """One warning when the positive-sample NLL term is on and none of the first `steps` logged
    steps had a response counted as positive (actor/positive_nll_frac == 0): the term then adds
    nothing, usually because a correct answer's reward is not exactly positive_nll_reward
    (a format bonus, an overlong penalty, a 0/1 reward scaled otherwise). steps 0 disables it."""

    def __init__(self, steps: int, coeff: float, reward: float, compare: str):
        self.steps, self.coeff, self.reward, self.compare = int(steps), float(coeff), float(reward), compare
        self.seen = 0
        self.done = self.steps <= 0

    def observe(self, positive_frac) -> str | None:
        if self.done or positive_frac is None:
            return None
        if float(positive_frac) > 0:
            self.done = True
            return None
        self.seen += 1
        if self.seen < self.steps:
            return None
        self.done = True
        rule = "==" if self.compare == "eq" else ">="
        return (
            f"erc_verl: policy_loss.positive_nll_coeff={self.coeff:g} but no response of the first {self.seen} "
            f"steps counted as positive (summed token-level reward {rule} {self.reward:g}), so the "
            "positive-sample NLL term added nothing. If a correct answer's reward differs (a format bonus, "
            "an overlong penalty), set policy_loss.positive_nll_reward and positive_nll_compare=ge; "
            "policy_loss.positive_nll_warn_steps=0 silences this."
        )
