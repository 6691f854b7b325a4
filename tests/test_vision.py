"""Image prompts through the sampler and the learner on the embedded tiny LLaVA (built from a config)."""
from __future__ import annotations

import io

import pytest
import torch

from actors.learner import Learner, LearnerSettings, Sample, completion_logprobs, sequence_logprobs
from actors.sampler import Sampler, SamplerSettings, SamplingParams


def png(color) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, "PNG")
    return buf.getvalue()


RED, BLUE = png((255, 0, 0)), png((0, 0, 255))


@pytest.fixture(scope="module")
def sampler():
    return Sampler(SamplerSettings(model="tiny-llava", threads=1))


@pytest.fixture(scope="module")
def learner():
    return Learner(LearnerSettings(model="tiny-llava", threads=1, lr=1e-3))


def samples_of(completions, images):
    return [Sample(c.prompt_ids, c.token_ids, 1.0, c.logprobs, images[c.prompt_index]) for c in completions]


def test_image_prompt_expands_the_placeholder_and_images_matter(sampler):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=6, seed=0)
    out = sampler.generate([{"text": "how many circles?", "image": RED},
                            {"text": "how many circles?", "image": BLUE}], params)
    assert [c.prompt_index for c in out] == [0, 0, 0, 1, 1, 1]
    image_id = sampler.backend.model.config.image_token_index
    assert out[0].prompt_ids.count(image_id) == 16          # (56 / 14)² patches
    assert out[0].prompt_ids == out[3].prompt_ids           # same text: the ids cannot tell the images apart
    assert all(len(c.logprobs) == len(c.token_ids) > 0 for c in out)


def test_learner_logprobs_match_the_sampler_per_image(sampler, learner):
    """The learner's recomputed log-probs equal the sampler's only if each sample gets its own
    image: two prompts with identical ids but different images are kept apart."""
    images = [RED, BLUE]
    out = sampler.generate([{"text": "what is it?", "image": im} for im in images],
                           SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=1))
    samples = samples_of(out, images)
    with torch.no_grad():
        logp, mask = completion_logprobs(learner.model, samples, learner.pad_id, vision=learner.vision)
        swapped = samples_of(out, images[::-1])
        logp_swapped, _ = completion_logprobs(learner.model, swapped, learner.pad_id, vision=learner.vision)
        whole, _ = sequence_logprobs(learner.model, samples, learner.pad_id, vision=learner.vision)
    for i, c in enumerate(out):
        n = len(c.token_ids)
        assert torch.allclose(logp[i, :n], torch.tensor(c.logprobs), atol=1e-4)
        assert torch.allclose(whole[i, :n], logp[i, :n], atol=1e-5)   # each sample run whole, its own image
    assert (logp - logp_swapped).abs().max() > 1e-5     # the image reaches the logits


def test_train_step_on_image_samples_and_weight_sync(sampler, learner):
    images = [RED, BLUE]
    out = sampler.generate([{"text": "what colour?", "image": im} for im in images],
                           SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=2))
    samples = [Sample(c.prompt_ids, c.token_ids, adv, c.logprobs, images[c.prompt_index])
               for c, adv in zip(out, [1.0, -1.0, 1.0, -1.0])]
    before = {k: v.clone() for k, v in learner.model.named_parameters()}
    stats = learner.train_step(samples)
    assert stats["grad_norm"] > 0
    vision_tower = [k for k in before if "vision_tower" in k]
    assert any(not torch.equal(before[k], dict(learner.model.named_parameters())[k]) for k in vision_tower)
    _, packed = learner.export_weights()
    sampler.load_weights(packed)
    again = sampler.generate([{"text": "what colour?", "image": RED}],
                             SamplingParams(n=2, temperature=1.0, max_new_tokens=4, seed=3))
    with torch.no_grad():
        logp, _ = completion_logprobs(learner.model, samples_of(again, [RED]), learner.pad_id,
                                      vision=learner.vision)
    for i, c in enumerate(again):
        assert torch.allclose(logp[i, :len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)


def test_text_model_refuses_image_prompts(tiny_lm):
    s = Sampler(SamplerSettings(model=tiny_lm, threads=1))
    with pytest.raises(ValueError, match="not a vision-language model"):
        s.generate([{"text": "what is it ?", "image": RED}], SamplingParams(n=1, max_new_tokens=2))


def test_learner_refuses_image_samples_without_a_vision_model(tiny_lm):
    learner = Learner(LearnerSettings(model=tiny_lm, threads=1))
    with pytest.raises(ValueError, match="vision-language model"):
        completion_logprobs(learner.model, [Sample([3, 4], [5], 1.0, image=RED)], learner.pad_id)


def test_length_batched_sampler_keeps_each_image_with_its_prompt(learner):
    """batch_tokens=1 runs every prompt alone, longest first (here the reverse of the caller's
    order): each prompt's pixel rows must travel with it, so the learner, given the same images,
    recomputes the sampler's log-probs."""
    batched = Sampler(SamplerSettings(model="tiny-llava", threads=1, batch_tokens=1))
    batched.load_weights(learner.export_weights()[1])
    prompts = [{"text": "what?", "image": RED}, {"text": "what colour is the thing in it?", "image": BLUE}]
    out = batched.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=4))
    assert [c.prompt_index for c in out] == [0, 0, 1, 1]
    with torch.no_grad():
        logp, _ = completion_logprobs(learner.model, samples_of(out, [RED, BLUE]), learner.pad_id,
                                      vision=learner.vision)
    for i, c in enumerate(out):
        assert torch.allclose(logp[i, :len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)


def test_static_cache_sampler_takes_image_prompts(learner):
    static = Sampler(SamplerSettings(model="tiny-llava", threads=1, static_cache=True))
    static.load_weights(learner.export_weights()[1])
    out = static.generate([{"text": "what is it?", "image": im} for im in (RED, BLUE)],
                          SamplingParams(n=2, temperature=1.0, max_new_tokens=5, seed=4))
    with torch.no_grad():
        logp, _ = completion_logprobs(learner.model, samples_of(out, [RED, BLUE]), learner.pad_id,
                                      vision=learner.vision)
    for i, c in enumerate(out):
        assert torch.allclose(logp[i, :len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4)
