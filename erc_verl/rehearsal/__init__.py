"""Rehearsal tools: the CPU smoke run of a recipe through verl's trainer, the demo, the gate audit."""
