# Golden YaRN values for tests/hf/yarn_golden.h, computed in float32 with torch the way
# DeepseekV2YarnRotaryEmbedding (Hugging Face DeepSeek-V2/V3 modeling code) does: correction
# range from beta_fast/beta_slow, floor/ceil and clamp, linear ramp over dim/2 pairs, blend of
# the plain and factor-divided frequencies; magnitude mscale(f, mscale)/mscale(f, mscale_all_dim)
# and softmax multiplier mscale(f, mscale_all_dim)^2.
# Run with Debian's python3-torch: /usr/bin/python3 tests/hf/yarn_golden.py
import math, torch
def golden(dim, base, factor, orig, beta_fast, beta_slow, mscale, mscale_all_dim):
    def corr_dim(rot): return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
    low = max(math.floor(corr_dim(beta_fast)), 0)
    high = min(math.ceil(corr_dim(beta_slow)), dim - 1)
    if low == high: high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    extra = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    inter = 1.0 / (factor * base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    mask = 1.0 - ramp
    inv = inter * (1 - mask) + extra * mask
    ms = lambda s, m: 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0
    print(dim, base, factor, orig, low, high)
    print("inv_freq", [f"{v:.9e}" for v in inv.tolist()])
    print("magnitude", repr(ms(factor, mscale) / ms(factor, mscale_all_dim)), "softmax", repr(ms(factor, mscale_all_dim) ** 2 if mscale_all_dim else 1.0))
golden(8, 10000.0, 4.0, 64, 8.0, 1.0, 1.0, 0.5)
golden(64, 10000.0, 40.0, 4096, 32.0, 1.0, 0.707, 0.707)
