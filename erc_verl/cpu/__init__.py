"""erc_verl's CPU runtime: what a recipe needs to run through verl's main_ppo on a CPU.

A verl plugin of its own (the `erc_verl_cpu` entry point of the `verl.plugins` group; the smoke and
the demo also name it in VERL_USE_EXTERNAL_MODULES), loaded after erc_verl itself. Importing it
only registers after-import hooks:
- always: the `hf` rollout backend in verl's rollout registries (hf_registry.py), whose server
  (rollout.py: torch, transformers, Ray) is imported only when a config selects `rollout.name=hf`;
- with VERL_PLATFORM=cpu: the `cpu` platform, verl's FSDP engines on it, what the Ray trainer
  needs to start there, and Ulysses over sdpa (platform.py, ulysses.py).
The layer below (erc_verl.integration) never imports this package.
"""

import os

from .hf_registry import register_hf_rollout

register_hf_rollout()
if os.environ.get("VERL_PLATFORM", "").strip().lower() == "cpu":
    from .platform import install_if_selected

    install_if_selected()
