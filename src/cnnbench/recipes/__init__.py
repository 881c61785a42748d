"""The benchmarks, each read top to bottom: training, inference, their sweeps (train-all, infer-all) and the
sweeps' time estimate, and what every run writes (run_record), evaluates (evaluation), resumes from
(checkpoints) and loads (weights).
"""
