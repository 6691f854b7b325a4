"""Learner → sampler weights: one byte layout (``layout``), the object-store package (``pack``),
the bucketed broadcast (``broadcast``), CUDA IPC (``ipc``), the vLLM worker side
(``vllm_worker``) and the driver side that runs a sync over any of them (``sync``)."""
