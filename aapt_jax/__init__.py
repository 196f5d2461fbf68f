"""aapt_jax: Autoregressive Adversarial Post-Training of video diffusion transformers in JAX."""
