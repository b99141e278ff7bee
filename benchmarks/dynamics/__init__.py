"""The small-scale ERC dynamics study (benchmarks/erc_dynamics_cpu.py): task, control, loop, report.

Nothing here is shipped in the plugin: the random-drop control loss is registered with verl
by the study itself, and ERC is always the plugin's own registered loss.
"""
