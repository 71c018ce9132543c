"""Predictions and the paper's metrics, bootstrap statistics, comparisons, embeddings, the linear protocol, plots."""
