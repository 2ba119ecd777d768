"""The evaluated model's answers: generated with any build-side engine, or read from an existing file."""

from __future__ import annotations

from realign_data.config import EngineConfig, ModelConfig
from realign_data.engines import GenerationRequest, SamplingParams, create_engine


def generate_answers(
    prompts: dict[str, str], model: ModelConfig, engine: EngineConfig, max_new_tokens: int, progress=None
) -> tuple[dict[str, str], dict]:
    """Greedy answers keyed like ``prompts``; returns them with the settings used and the model's identity."""
    generator = create_engine(engine, model)
    params = SamplingParams(n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens)
    requests = [GenerationRequest(key, [{"role": "user", "content": text}], params) for key, text in prompts.items()]
    answers, failed = {}, []
    for result in generator.generate(requests, progress):
        if result.error is not None or not result.completions:
            failed.append(result.request_id)
        else:
            answers[result.request_id] = result.completions[0].text
    settings = {
        "engine": engine.kind,
        "model": model.spec,
        "model_id": generator.model_id,
        "sampling": params.as_dict(),
        "failed": failed,
    }
    return answers, settings
