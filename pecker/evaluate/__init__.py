"""Evaluation (docs/method.md section 6): classifier-based accuracy / UA, and feature-based FID, KID,
precision, recall and IS, each result recorded with the implementation that produced it."""
