"""`mamba2_ref`: mamba-ssm's own Mamba-2 1.3B (MambaLMHeadModel, 48 layers, d_model 2048, random
weights) decoded exactly as its `generate(..., cg=True)` does: the decoding cache and CUDA graph from
`mamba_ssm.utils.generation.update_graph_cache`, one graph replay per token. The speed sweep runs it
beside OmniMamba so that our decode is compared with the library's in the same run. GPU only; it
answers no benchmark.
"""
from __future__ import annotations

import torch

from omnibench.args import Arg
from omnibench.protocol import ModelAdapter, OmnibenchError, SpeedProtocol

from omnibench.models.common.dtypes import resolve_dtype

# Longest context the graphs are captured for. Mamba-2's state has a fixed size, so this only bounds
# the position counter; it costs no memory.
MAX_SEQLEN = 1 << 20


class MambaSsmReference(ModelAdapter, SpeedProtocol):
    name = "mamba2_ref"

    ARGS = (Arg("preset", str, "full", "always full size, random weights", ("full",)),
            Arg("mode", str, "best", "mamba-ssm's generate(cg=True) decode", ("best", "as_published")))

    def __init__(self, device: str = "cuda", dtype: str = "bfloat16", **model_args: str) -> None:
        super().__init__(device, dtype, **model_args)
        if not str(device).startswith("cuda"):
            raise OmnibenchError("mamba2_ref runs mamba-ssm's CUDA-graph decode: it needs --device cuda")
        torch_dtype = resolve_dtype(dtype, device, self.name, auto=torch.bfloat16)
        try:
            from mamba_ssm.models.config_mamba import MambaConfig
            from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
            from mamba_ssm.utils.generation import update_graph_cache
        except ImportError as exc:
            raise OmnibenchError(f"mamba2_ref needs mamba-ssm (pip install -e '.[gpu]'): {exc}") from exc
        cfg = MambaConfig(d_model=2048, n_layer=48, vocab_size=50288, ssm_cfg={"layer": "Mamba2"},
                          rms_norm=True, residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=16)
        torch.manual_seed(0)
        self.model = MambaLMHeadModel(cfg, device=device, dtype=torch_dtype).eval()
        self.vocab_size = cfg.vocab_size
        # Captured once, as generate(cg=True) does on its first call; prefill timing then excludes it.
        self.cache = update_graph_cache(self.model, None, 1, 1, MAX_SEQLEN)

    def speed_context(self, length: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(length)
        return torch.randint(0, 1000, (1, length), generator=gen)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, max_new_tokens: int = 0):
        params = self.cache.inference_params
        params.reset(MAX_SEQLEN, 1)
        ids = input_ids.to(self.model.lm_head.weight.device)
        params.logits = self.model(ids, inference_params=params, num_last_tokens=1).logits[:, -1]
        params.seqlen_offset += ids.shape[1]
        return params

    @torch.inference_mode()
    def decode_step(self, params, token: torch.Tensor) -> torch.Tensor:
        device = self.model.lm_head.weight.device
        position = torch.full((1, 1), params.seqlen_offset, dtype=torch.long, device=device)
        logits = self.cache.run(token.view(1, 1).to(device), position, params.seqlen_offset)
        params.seqlen_offset += 1
        return logits[:, -1]
