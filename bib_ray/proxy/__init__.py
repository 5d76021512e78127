"""LM proxies: soft one-hot designs in, embeddings phi out; plus the small default LM."""
