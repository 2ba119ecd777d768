"""The build stages on a Ray cluster: requests spread over long-lived engine actors, results back in chunks.

With ``execution.backend: ray`` a stage's requests (generation, revision) or items (scoring) become a Ray Data
dataset mapped by a pool of ``execution.workers`` actors, each holding one engine or scorer built from the config
on its node (hf on CPU or GPU, vllm on GPUs, openai against any endpoint the node reaches; reward models too).
Each actor call takes ``execution.chunk`` requests, and its results stream back to this process, which writes
them to the stage cache as they arrive: the cache stays the single source of truth and no filesystem is shared
between nodes. Ray restarts an actor that dies and reruns its unfinished chunk, so a killed worker costs at most
a chunk; a killed driver's rerun computes only what is not cached. Sampling is seeded per request, so the rows do
not depend on which actor or batch produced them (in float32). Engine counters (retries) and judge re-asks on the
workers are summed here, so failures are counted as on the local path.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from realign_data.config import EngineConfig, ExecutionConfig, ModelConfig, ScoringConfig
from realign_data.errors import InputError, RealignError, one_line
from realign_data.official import unreachable
from realign_data.scoring import batch_plan
from realign_data.templates import Template

log = logging.getLogger(__name__)


def _counters(owner: Any) -> Counter:
    return Counter(getattr(owner, "stats", None) or {})


class _EngineWorker:
    """A Ray actor holding one engine: generates a chunk of pickled requests per call."""

    def __init__(self, engine: dict, model: dict):
        from realign_data.engines import create_engine

        self.engine = create_engine(EngineConfig(**engine), ModelConfig(**model))

    def __call__(self, batch: dict) -> dict:
        requests = [request for blob in batch["item"] for request in pickle.loads(blob)]
        before = _counters(self.engine)
        results = list(self.engine.generate(requests, lambda n: None))
        return {"item": [pickle.dumps(results)], "stats": [json.dumps(_counters(self.engine) - before)]}


class _ScorerWorker:
    """A Ray actor holding one scorer (a reward model, or a judge on its own engine): scores a chunk per call."""

    def __init__(self, scoring: dict, engine: dict, model: dict, template: Template):
        from realign_data.engines import create_engine
        from realign_data.scoring import make_scorer

        judge = (EngineConfig(**engine), ModelConfig(**model))
        self.scorer = make_scorer(ScoringConfig(**scoring), judge, template, create_engine)

    def __call__(self, batch: dict) -> dict:
        engine = getattr(self.scorer, "engine", None)
        before, reasks = _counters(engine), getattr(self.scorer, "reasks", 0)
        scores = [score for blob in batch["item"] for score in self.scorer.score(pickle.loads(blob), None)]
        delta = _counters(engine) - before
        delta["reasks"] = getattr(self.scorer, "reasks", 0) - reasks
        return {"item": [pickle.dumps(scores)], "stats": [json.dumps(delta)]}


class RayExecutor:
    """Runs stage work on the Ray cluster ``config.address`` (joined, or started on this machine, on first use)."""

    def __init__(self, config: ExecutionConfig):
        self.config = config

    def _connect(self):
        import ray

        if not ray.is_initialized():
            address = None if self.config.address == "local" else self.config.address
            if address not in (None, "auto"):  # ray.init retries an unreachable address for minutes
                host, _, port = address.removeprefix("ray://").rpartition(":")
                if not (host and port.isdigit()):
                    raise InputError(
                        f"execution.address {address!r}: expected local, auto, HOST:PORT or ray://HOST:PORT"
                    )
                if reason := unreachable(host, int(port)):
                    raise RealignError(f"cannot reach the Ray cluster at {address} ({reason}); check `ray status`")
            try:
                ray.init(address=address, log_to_driver=False, include_dashboard=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = "start Ray on this machine" if address is None else f"reach the Ray cluster at {address}"
                raise RealignError(f"cannot {where} ({one_line(exc)[:200]}); check `ray status`") from None
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            log.info("ray: %s", ray.cluster_resources())
        return ray

    def map(
        self, groups: list[list], worker: type, args: tuple, counters: Counter, per_call: int, key: Callable
    ) -> Iterator[Any]:
        """``groups`` of work through ``worker(*args)`` actors, ``per_call`` groups per actor call (a group is one
        request, or one scorer batch, which stays whole); results as they arrive, each once by ``key(result)`` (a
        task Ray retried after its results came delivers them again), the workers' counters added to ``counters``."""
        if not groups:
            return
        ray = self._connect()
        calls = math.ceil(len(groups) / per_call)
        data = ray.data.from_items([{"item": pickle.dumps(group)} for group in groups], override_num_blocks=calls)
        mapped = data.map_batches(
            worker,
            fn_constructor_args=args,
            batch_size=per_call,
            compute=ray.data.ActorPoolStrategy(size=min(self.config.workers, calls)),
            num_cpus=self.config.cpus_per_worker,
            num_gpus=self.config.gpus_per_worker,
        )
        seen: set[str] = set()
        try:
            for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
                for text in batch["stats"]:
                    counters.update(json.loads(text))
                for blob in batch["item"]:
                    for result in pickle.loads(blob):
                        if key(result) not in seen:
                            seen.add(key(result))
                            yield result
        except (InputError, RealignError):
            raise
        except Exception as exc:  # noqa: BLE001 - an actor that cannot start, a lost node: one line
            raise RealignError(f"ray: a stage failed on the cluster ({one_line(exc)[:300]})") from None

    def engine(self, engine: EngineConfig, model: ModelConfig) -> RemoteEngine:
        return RemoteEngine(self, engine, model)

    def scorer(self, scoring: ScoringConfig, judge: tuple[EngineConfig, ModelConfig], template: Template):
        return RemoteScorer(self, scoring, judge, template)


class RemoteEngine:
    """An engine whose requests run on the Ray cluster; ``stats`` sums the workers' counters."""

    def __init__(self, executor: RayExecutor, engine: EngineConfig, model: ModelConfig):
        self.executor, self.args = executor, (engine.model_dump(), model.model_dump())
        self.stats: Counter = Counter()

    def generate(self, requests: list, progress: Callable[[int], None]) -> Iterator[Any]:
        groups = [[request] for request in requests]
        chunk = self.executor.config.chunk
        for result in self.executor.map(groups, _EngineWorker, self.args, self.stats, chunk, lambda r: r.request_id):
            progress(1)
            yield result


class RemoteScorer:
    """A scorer whose items are scored on the Ray cluster; ``reasks`` and ``engine.stats`` sum the workers'."""

    def __init__(
        self, executor: RayExecutor, scoring: ScoringConfig, judge: tuple[EngineConfig, ModelConfig], template: Template
    ):
        self.executor, self.scoring, self.judge, self.template = executor, scoring, judge, template
        self.args = (scoring.model_dump(), judge[0].model_dump(), judge[1].model_dump(), template)
        self.engine = self  # where the build reads the retry counters
        self.stats: Counter = Counter()

    @property
    def reasks(self) -> int:
        return self.stats["reasks"]

    def score(self, items: list, progress: Callable[[int], None] | None = None) -> Iterator[Any]:
        """Each batch the in-process scorer would form is scored whole by one actor (the same floats as here)."""
        plan = batch_plan(self.scoring, self.judge, self.template, items)
        chunk = self.executor.config.chunk
        if plan is None:  # a text judge: independent requests
            groups, per_call = [[item] for item in items], chunk
        else:
            groups, per_call = [[items[i] for i in batch] for batch in plan], max(1, chunk // self.scoring.batch_size)
        for score in self.executor.map(groups, _ScorerWorker, self.args, self.stats, per_call, lambda s: s.key):
            if progress is not None:
                progress(1)
            yield score
