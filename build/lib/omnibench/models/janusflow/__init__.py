"""JanusFlow (deepseek-ai/Janus): DeepSeek-LLM 1.3B with a SigLIP understanding encoder and
rectified-flow image generation in the SDXL-VAE latent space."""
from .adapter import JanusFlowAdapter

__all__ = ["JanusFlowAdapter"]
