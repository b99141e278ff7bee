"""The loss-mode names this package adds to verl (no verl import, so anything may read them)."""

# Loss modes whose gradient is gated by the entropy ratio. `erc` gates the base loss named by
# policy_loss.erc_base_loss_mode; dapo_erc and gppo_erc are `erc` over vanilla and gppo.
ERC_LOSS_MODES = ("erc", "dapo_erc", "gppo_erc")
# Every loss mode this package registers (gppo is the ungated GPPO baseline).
REGISTERED_LOSS_MODES = ("erc", "dapo_erc", "gppo", "gppo_erc")

# Base losses ERC can gate: each token's loss depends on the parameters only through its own
# log_prob[t] (the aggregation weights, and any token selection, are constants of the batch), so
# stopping the gradient of log_prob[t] stops exactly that token's gradient. Per verl 0.9.1 mode
# (verl/trainer/ppo/core_algos.py; docs/algorithm.md, "Which base losses ERC can gate"):
TOKEN_LOCAL_MODES = (
    "vanilla",  # PPO-clip, dual-clip: per-token ratio r_t = exp(log_prob[t] - old[t])
    "dppo_tv",  # per-token ratio, clipped by a per-token divergence bound
    "dppo_kl",  # same, with a per-token KL bound
    "sapo",  # per-token soft gate of r_t
    "gpg",  # -A_t * log_prob[t]
    "clip_cov",  # per-token PPO loss; tokens selected by batch covariance, selection non-differentiable
    "kl_cov",  # per-token loss + KL term on selected tokens; selection non-differentiable
    "dro",  # -(A_t log_prob[t] - beta/2 (log_prob[t] - old[t])^2)
    "cispo",  # -sg(clip(r_t)) A_t log_prob[t]
    "gppo",  # erc_verl's GPPO: per-token ratio
)
# Refused: the loss of token t depends on the other tokens' log-probs of its sequence.
SEQUENCE_LEVEL_MODES = {
    "gspo": "its ratio is the sequence's geometric-mean ratio exp(mean_t(log_prob - old)), so every "
    "token's gradient flows through all tokens of the sequence",
    "geo_mean": "its ratio is a per-sequence geometric mean of token ratios (GMPO), shared by all tokens",
    "bypass_mode": "it has no old-log-prob pass, where H_old comes from",
}
