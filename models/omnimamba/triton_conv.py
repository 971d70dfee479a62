"""The width-4 causal conv update of one decode token as a `@triton.jit` helper, shared by
`ssd.conv_update_triton`, fused.py's in_proj epilogue and the persistent decode kernel (through
`ssd.triton_helpers()`, which imports this module, and triton with it, on first use)."""
import triton
import triton.language as tl


@triton.jit
def conv_step(win, cw0, cw1, cw2, cw3, cb, x, mask):
    """Shifts the window at `win` (4 entries per channel) left and appends `x`; returns
    SiLU(cb + s1 cw0 + s2 cw1 + s3 cw2 + x cw3), summed in fp32 in that order (causal-conv1d's)."""
    s1 = tl.load(win + 1, mask=mask, other=0.0)
    s2 = tl.load(win + 2, mask=mask, other=0.0)
    s3 = tl.load(win + 3, mask=mask, other=0.0)
    acc = cb + s1.to(tl.float32) * cw0
    acc += s2.to(tl.float32) * cw1
    acc += s3.to(tl.float32) * cw2
    acc += x.to(tl.float32) * cw3
    tl.store(win, s1, mask=mask)
    tl.store(win + 1, s2, mask=mask)
    tl.store(win + 2, s3, mask=mask)
    tl.store(win + 3, x.to(s1.dtype), mask=mask)
    return acc * tl.sigmoid(acc)
