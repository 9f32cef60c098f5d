"""The classifier that measures forgetting (UA) and retained-class accuracy (method.md section 6)."""
