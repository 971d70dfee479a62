"""Show-o (showlab/Show-o): a Phi-1.5 backbone over text and MAGVIT-v2 image tokens with
omni-attention; understanding by next-token prediction, text-to-image by masked discrete diffusion."""
from .adapter import ShowoAdapter

__all__ = ["ShowoAdapter"]
