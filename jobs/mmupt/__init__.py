"""MM-UPT: unsupervised post-training of a vision-language model on its own majority votes."""
