"""Speed levers for CPU decoding and training, each measured in benchmarks/.

- ``kv_cache.PreallocatedCache``: a KV cache that writes into preallocated buffers instead of
  concatenating a new tensor at every decoded token.
- ``attention.grouped_attention``: grouped-query attention that folds the query heads of a KV
  head together instead of materialising repeated keys/values (``repeat_kv``) at every layer.
"""

from groupwise.kernels.attention import GROUPED_ATTENTION, register_grouped_attention
from groupwise.kernels.kv_cache import PreallocatedCache

__all__ = ["GROUPED_ATTENTION", "PreallocatedCache", "register_grouped_attention"]
