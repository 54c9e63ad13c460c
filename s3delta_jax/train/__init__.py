"""Loops, evaluation, checkpoints and outputs behind run_search.py and run_retrain.py."""
