"""Generation engines: one interface (chat messages in, n samples out), three backends.

- ``hf``: transformers, in-process, continuous batching (realign_data/engines/decoding.py).
- ``openai``: any OpenAI-compatible server (vllm serve, SGLang, TGI, transformers serve), async, retried.
- ``vllm``: in-process ``vllm.LLM`` (optional extra, CUDA only).
"""

import logging

from realign_data.engines.base import Completion, Engine, GenerationRequest, GenerationResult, SamplingParams
from realign_data.provenance import strip_url_credentials

log = logging.getLogger(__name__)

__all__ = ["Completion", "Engine", "GenerationRequest", "GenerationResult", "SamplingParams", "create_engine"]


def create_engine(config, model_config):
    """Build the engine ``config.kind`` for the model in ``model_config`` (see realign_data.config)."""
    log.info(
        "engine %s for %s%s",
        config.kind,
        strip_url_credentials(model_config.spec),
        f" at {', '.join(strip_url_credentials(url) for url in config.base_urls)}" if config.base_urls else "",
    )
    if config.kind == "hf":
        from realign_data.engines.hf import HFEngine

        return HFEngine.from_config(config, model_config)
    if config.kind == "openai":
        from realign_data.engines.openai_engine import OpenAIEngine

        return OpenAIEngine.from_config(config, model_config)
    from realign_data.engines.vllm_engine import VLLMEngine

    return VLLMEngine.from_config(config, model_config)
