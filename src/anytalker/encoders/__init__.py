"""Frozen encoders around the DiT: the Wan2.1 VAE, umT5, CLIP vision and wav2vec."""
