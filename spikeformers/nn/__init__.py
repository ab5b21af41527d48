"""The vocabulary of spiking transformers: neurons and surrogate gradients, layers (stems, MLPs,
conv-BN-neuron units), C-kernel-backed layers (:mod:`.fused`), token selection (:mod:`.tokens`) and
the attentions (:mod:`.attention`, one file per mechanism and the registry that builds one by name).
Everything here works on time-first tensors ``[T, B, ...]``."""
