"""Multi-process runs under ``accelerate launch``: data sharding, global means, gradient sums, backends.

forgetlab shards the *data*, never the model (under DDP): every process holds the whole model, takes
its part of each global batch, and partial results are summed or gathered so that N processes compute
what one process computes on the whole batch, up to float summation order. Modules: ``shard``
(:class:`~forgetlab.dist.shard.Shard`), ``means`` (losses over the global batch), ``grads`` (gradient
sums), ``backends`` (which accelerate backend runs what). See ``docs/multi-gpu.md``.
"""
