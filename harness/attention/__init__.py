"""Attention: the variant spec strings, the per-row scales that implement them, the split kernel, the probe.

`spec` parses and resolves spec strings (no torch); `variants` installs a variant on a model's attention modules
(the "lch" attention implementation); `split` is the mask-free kernel for a suffix after cached keys; `probe`
captures attention statistics. Importing this package imports torch.
"""

from harness.attention.spec import SPEC_HELP, AttentionSpec, parse_spec, resolve_spec
from harness.attention.variants import (add_ssmax_parameters, apply_attention, attention_modules, attention_weights,
                                        has_ssmax_parameters, lch_attention, visible_keys)

__all__ = ["SPEC_HELP", "AttentionSpec", "add_ssmax_parameters", "apply_attention", "attention_modules",
           "attention_weights", "has_ssmax_parameters", "lch_attention", "parse_spec", "resolve_spec", "visible_keys"]
