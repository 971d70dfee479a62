"""omnibench: evaluation harness for unified multimodal models (OmniMamba and its baselines)."""
__version__ = "0.1.0"
