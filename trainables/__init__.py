"""Ray entry points of the liveedit platform (see README.md): thin wrappers around the library.

- :mod:`trainables.cluster`: connect to a Ray cluster (local by default, ``--address``, tokens);
- :mod:`trainables.meta_train`: LiveEdit meta-training on Ray Train with DeepSpeed ZeRO;
- :mod:`trainables.eval_actors`: the lifelong evaluation grid sharded over Ray actors.
"""
