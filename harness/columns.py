"""Table column names, defined once (DESIGN.md lists the required columns per table). No imports.

Every table row a task writes starts with the model columns (the runner adds them); the grid and score columns
below are shared by the needle-style tasks, position_loss and the probe.
"""

MODEL = "model"
ATTENTION = "attention"
ROPE_THETA = "rope_theta"
MODEL_COLUMNS = (MODEL, ATTENTION, ROPE_THETA)
"""one panel, line or headline row per distinct value of these (harness.results.tables.variant_key)"""

CONTEXT_LENGTH = "context_length"
DEPTH = "depth"
TRIAL = "trial"
CORRECT = "correct"
"""1.0 when the greedy answer is right (all asked values, for the retrieval family), else 0.0"""
ANSWER_NLL = "answer_nll"
"""mean NLL (nats per token) of the gold answer, teacher-forced after the prompt"""
ACCURACY = "accuracy"
"""mean of `correct` over a group of prompts"""
