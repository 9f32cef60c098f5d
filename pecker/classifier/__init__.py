"""The classifier that measures forgetting (UA) and retained-class accuracy (docs/method.md section 6)."""
