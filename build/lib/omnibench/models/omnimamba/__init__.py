"""OmniMamba (hustvl/OmniMamba): a Mamba-2 model for image understanding and text-to-image."""
from .adapter import OmniMambaAdapter

__all__ = ["OmniMambaAdapter"]
