"""SRT: self-rewarded training on majority votes over the model's own samples (arXiv 2505.21444)."""
