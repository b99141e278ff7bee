"""The loss-mode names this package adds to verl (no verl import, so anything may read them)."""

# Loss modes whose gradient is gated by the entropy ratio.
ERC_LOSS_MODES = ("dapo_erc", "gppo_erc")
# Every loss mode this package registers (gppo is the ungated GPPO baseline).
REGISTERED_LOSS_MODES = ("dapo_erc", "gppo", "gppo_erc")
