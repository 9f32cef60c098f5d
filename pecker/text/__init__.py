"""Text-to-image conditioning: the text stack, prompt sets and caption generation (docs/method.md section 1)."""
