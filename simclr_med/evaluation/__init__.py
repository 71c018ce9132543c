"""Scoring trained weights and presenting the scores.

`predict` (restore, predict, score, result files), `metrics` (the paper's metrics), `statistics`
(bootstrap CIs, paired differences, t-tests), `tables`, `compare` (CLI), `embeddings`,
`linear_protocol`, `plots`.
"""
