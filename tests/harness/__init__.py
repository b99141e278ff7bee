"""Test harness: drive verl's engine TrainingWorker in-process on CPU. Not part of the installed package."""
