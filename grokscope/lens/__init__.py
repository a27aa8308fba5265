"""The logit lens and direct logit attribution: what each residual state decodes to.

- :mod:`.logit_lens`: :func:`logit_lens` (MRR / recall of lens targets at every ``S[l]``),
  :func:`lens_split` (a task split's own targets), the input checks shared by analyses;
- :mod:`.attribution`: :func:`direct_logit_attribution` (each component's direct effect);
- :mod:`.attention`: :func:`attention_patterns`, :func:`attention_mass`, :func:`top_keys`
  (where each head looks, per example);
- :mod:`.checkpoint`: :func:`checkpoint_lens`, one checkpoint of a run, cached (the
  ``lens`` step analysis of the series engine).
"""

from grokscope.lens.attention import attention_mass, attention_patterns, top_keys
from grokscope.lens.attribution import DLAResult, direct_logit_attribution
from grokscope.lens.checkpoint import checkpoint_lens
from grokscope.lens.logit import LensResult, lens_split, lens_targets, logit_lens, top_tokens

__all__ = ["LensResult", "logit_lens", "lens_split", "lens_targets", "top_tokens",
           "DLAResult", "direct_logit_attribution", "checkpoint_lens",
           "attention_patterns", "attention_mass", "top_keys"]
