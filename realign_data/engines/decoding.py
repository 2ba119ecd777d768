"""Continuous batching for a transformers causal LM, with per-row seeded sampling.

``model.generate`` runs a batch until its longest row ends, prefills every sample of a prompt again, copies the
whole KV cache every step and sorts the full vocabulary of every row every step for top-p. This decoder keeps
``slots`` sequences decoding at once instead:

- a prompt is prefilled once, alone, and its KV copied into the slots of its K samples;
- a finished sequence frees its slot at once and the next prompt's samples take it (no step is spent on a row
  that has ended); when no prompt waits, the batch is compacted to the rows still running;
- the KV cache is one buffer per layer with room to grow: a step writes one column in place. Rows are aligned on
  their last column, each masked before its own first one;
- every row draws its Gumbel noise from its own seeded generator (the same draws as the ``model.generate`` path
  of realign_data/engines/hf.py) and takes the argmax of the noised logits among the tokens the filters keep (an
  exact sample of the filtered softmax);
- a decoding step attends one row at a time over that row's keys (``row_attention``), prompts are prefilled
  alone, and the packed linear layers on CPU are row-independent (oneDNN, float32 or bfloat16): a sample's
  logits, and so the sample, are those it gets decoded alone, whatever rows share its steps, so a resumed build
  regenerates it exactly;
- on CPU the cache holds a bfloat16 model's keys and values in float32 (exactly the same values) and decoding
  attends in float32: PyTorch's bfloat16 attention on CPU took 3x float32's time for a one-token query;
- top-p is exact: it is computed on the likeliest tokens only once they hold the top-p mass, on the whole
  vocabulary otherwise.

It serves models whose attention layers all see the whole context (Llama, Qwen2, Mistral without a sliding
window, ...); ``supports`` says whether a model is one.
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from realign_data.engines.base import GenerationRequest, SamplingParams, row_seed

CANDIDATES = 64  # top-p looks at this many likeliest tokens first (more when they hold less than top_p)
WIDER = 16 * CANDIDATES  # and then at this many


def cache_argument(model) -> str:
    """The name ``model.forward`` takes its KV cache under (``past_key_values`` was renamed ``cache`` in 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


ROW_ATTENTION = "realign_rows"  # the attention implementation the decoder sets on its model


def row_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA that attends a decoding step over each row's own keys only, rows seeing the same keys together.
    Batched attention over rows of different lengths sums each row's keys at offsets and in blocks set by the
    longest row, so a row's result would depend on its neighbours in the last bits; here it does not (SDPA
    computes each row and head on its own). Every packed linear layer on the CPU is row-independent too (oneDNN,
    realign_data/kernels.py), so a sample is decoded exactly as it would be alone. Prefill is plain SDPA."""
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    output = query.new_zeros(query.shape[0], 1, query.shape[1], query.shape[3])
    query = query.to(key.dtype)  # a bfloat16 model's keys are float32 in the decoder's cache on CPU (SlotLayer)
    for start, end, keys in _STEP_RUNS.of(attention_mask, query.shape[0], key.shape[2]):
        row_key, row_value = (
            (key[start:end, :, keys:], value[start:end, :, keys:])
            if isinstance(keys, int)
            else (key[start:end, :, keys], value[start:end, :, keys])
        )
        attended = torch.nn.functional.scaled_dot_product_attention(
            query[start:end], row_key, row_value, scale=scaling, enable_gqa=gqa
        )
        output[start:end] = attended.transpose(1, 2)
    return output, None


def _key_runs(mask: torch.Tensor | None, rows: int, length: int) -> list[tuple[int, int, int | torch.Tensor]]:
    """Runs of consecutive rows that see the same keys, as (first row, end row, keys): ``keys`` is the first key
    where a row sees ``first:`` (the usual case), else the indices of one row's keys. Rows that see nothing are
    left out (free slots)."""
    if mask is None:
        return [(0, rows, 0)]
    visible = mask[:, 0, -1]  # [rows, keys]
    firsts, counts = visible.int().argmax(-1).tolist(), visible.sum(-1).tolist()
    runs: list[tuple[int, int, int | torch.Tensor]] = []
    for row, (first, count) in enumerate(zip(firsts, counts, strict=True)):
        if count == 0:
            continue
        if count != length - first:  # not one run of keys to the end: this row alone, its keys gathered
            runs.append((row, row + 1, visible[row].nonzero()[:, 0]))
        elif runs and runs[-1][1] == row and isinstance(runs[-1][2], int) and runs[-1][2] == first:
            runs[-1] = (runs[-1][0], row + 1, first)
        else:
            runs.append((row, row + 1, first))
    return runs


class _StepRuns:
    """The key runs of a step's mask, worked out at its first layer: every layer of a forward pass gets the same mask
    tensor. The mask is held, so a later step's mask cannot be a new tensor with its identity."""

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None
        self.runs: list[tuple[int, int, int | torch.Tensor]] = []

    def of(self, mask: torch.Tensor | None, rows: int, length: int) -> list[tuple[int, int, int | torch.Tensor]]:
        if mask is None or mask is not self.mask:
            self.mask, self.runs = mask, _key_runs(mask, rows, length)
        return self.runs


_STEP_RUNS = _StepRuns()

AttentionInterface.register(ROW_ATTENTION, row_attention)
AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)


def supports(model) -> bool:
    """Whether every attention layer of ``model`` keeps the whole context (no sliding window, no linear state)."""
    cache = DynamicCache(config=model.config)
    if not cache.layers:
        return cache.layer_class_to_replicate is DynamicLayer
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class SlotLayer(DynamicLayer):
    """One layer's keys and values for ``slots`` rows: a buffer [slots, heads, capacity, dim] whose live columns
    are ``start:end``; a decode step writes column ``end`` for every row."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, start: int, end: int):
        super().__init__()
        self.buffer_keys, self.buffer_values, self.start, self.end = keys, values, start, end
        self.is_initialized, self.device = True, keys.device
        self._views()

    def _views(self) -> None:
        self.keys = self.buffer_keys[:, :, self.start : self.end]
        self.values = self.buffer_values[:, :, self.start : self.end]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.end == self.buffer_keys.shape[2]:  # full
            self.relayout(self.end - self.start, self.buffer_keys.shape[0])
        self.buffer_keys[:, :, self.end] = key_states[:, :, -1]
        self.buffer_values[:, :, self.end] = value_states[:, :, -1]
        self.end += 1
        self._views()
        return self.keys, self.values

    def relayout(self, columns: int, slots: int, rows: torch.Tensor | None = None) -> None:
        """A new buffer of ``slots`` rows whose live part is ``columns`` wide: the newest live columns (of ``rows``
        only, when given), empty ones on the left where there are fewer; as much room again to grow."""
        kept = min(columns, self.end - self.start)
        keys, values = (b[:, :, self.end - kept : self.end] for b in (self.buffer_keys, self.buffer_values))
        if rows is not None:
            keys, values = keys[rows], values[rows]
        shape = (slots, keys.shape[1], 2 * columns + 16, keys.shape[3])
        self.buffer_keys, self.buffer_values = keys.new_zeros(shape), values.new_zeros(shape)
        self.buffer_keys[: keys.shape[0], :, columns - kept : columns] = keys
        self.buffer_values[: values.shape[0], :, columns - kept : columns] = values
        self.start, self.end = 0, columns
        self._views()


@dataclass
class Row:
    """A sample being decoded: which request and sample it is, its prompt, its generator and its tokens."""

    request: GenerationRequest
    sample: int
    prompt: list[int]
    generator: torch.Generator
    tokens: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)  # the raw logits of every step, when asked


class Sampler:
    """The next token of every row from its raw logits, in vLLM's order: repetition penalty, temperature, min-p,
    top-k, top-p (each on what the previous left, renormalized), then seeded Gumbel noise per row.

    Top-p removes a token when the tokens no likelier than it (itself included, ties in sort order) hold at most
    ``1 - top_p`` of the mass, as vLLM does; equivalently, it keeps a token while the likelier tokens hold less
    than ``top_p``. Sorting the whole vocabulary every step is slow, so each row is resolved by the cheapest of:
    its likeliest 64 tokens, its likeliest 1024, its least likely sixth (flat rows, where what is removed is a
    thin tail), and a full sort. Which one serves a row depends on that row only, never on its neighbours, so a
    sample does not depend on its batch."""

    def __init__(self, params: SamplingParams):
        self.params = params

    def __call__(self, logits: torch.Tensor, rows: list[Row]) -> list[int]:
        p = self.params
        logits = logits.float()
        if p.repetition_penalty != 1:
            logits = logits.clone()
            for index, row in enumerate(rows):
                seen = torch.tensor(sorted(set(row.prompt) | set(row.tokens)), device=logits.device)
                values = logits[index, seen]
                logits[index, seen] = torch.where(
                    values > 0, values / p.repetition_penalty, values * p.repetition_penalty
                )
        if p.temperature == 0:
            return logits.argmax(dim=-1).tolist()
        scores = logits / p.temperature
        probs = torch.softmax(scores, dim=-1)
        if p.min_p > 0:
            probs = probs * (probs >= p.min_p * probs.max(dim=-1, keepdim=True).values)
        if 0 < p.top_k < probs.shape[-1]:  # every token as likely as the k-th stays (vLLM's threshold)
            probs = probs * (probs >= torch.topk(probs, p.top_k, dim=-1).values[:, -1:])
        probs = probs / probs.sum(-1, keepdim=True)
        # Gumbel-max over the kept tokens: a full row of uniforms per step from the row's own generator, read at
        # the kept tokens' ids, so a token's noise does not depend on which other tokens were kept
        uniforms = torch.stack([torch.rand(scores.shape[-1], generator=row.generator) for row in rows])
        picks = [0] * len(rows)
        for members, tokens, kept in self._kept(probs):
            noise = uniforms[members].gather(1, tokens).clamp_(1e-10, 1 - 1e-7).log_().neg_().log_().neg_()
            noised = torch.where(kept, scores[members].gather(1, tokens) + noise, float("-inf"))
            chosen = tokens.gather(1, noised.argmax(-1, keepdim=True))[:, 0].tolist()
            for member, token in zip(members.tolist(), chosen, strict=True):
                picks[member] = token
        return picks

    def _kept(self, probs: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(rows, candidate tokens [rows, c], kept [rows, c]) groups covering every row once; tokens outside a
        row's candidates are not kept."""
        top_p, vocab = self.params.top_p, probs.shape[-1]
        pending = torch.arange(probs.shape[0])
        if top_p >= 1:
            yield pending, self._all(probs), probs > 0
            return
        reach = torch.ones(len(pending))  # the most each pending row's next candidates could hold
        for count, after in ((CANDIDATES, WIDER), (WIDER, vocab)):  # the likeliest tokens
            tried = reach >= top_p
            if count >= vocab or not bool(tried.any()):
                break
            values, tokens = torch.topk(probs[pending[tried]], count, dim=-1)  # likeliest first
            held = values.cumsum(-1)
            done = held[:, -1] >= top_p  # the next token would be removed
            yield pending[tried][done], tokens[done], self._kept_head(values[done], held[done])
            # the next `after - count` tokens are each at most as likely as the last one here
            reach = torch.cat([reach[~tried], (held[:, -1] + (after - count) * values[:, -1])[~done]])
            pending = torch.cat([pending[~tried], pending[tried][~done]])
        count = vocab // 6 + 1
        if len(pending) and count < vocab:  # flat rows: what is removed lies in the least likely tokens
            values, tokens = torch.topk(probs[pending], count, dim=-1, largest=False)  # least likely first
            through = values.cumsum(-1)
            done = through[:, -1] > 1 - top_p  # the likeliest of these is kept, and so every likelier one
            removed = torch.zeros(int(done.sum()), vocab, dtype=torch.bool)
            removed.scatter_(1, tokens[done], (through <= 1 - top_p)[done] | (values[done] <= 0))
            yield pending[done], self._all(removed), ~removed
            pending = pending[~done]
        if len(pending):
            values, tokens = torch.sort(probs[pending], dim=-1, descending=True)
            yield pending, tokens, self._kept_head(values, values.cumsum(-1))

    def _kept_head(self, values: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
        """Of candidates sorted likeliest first (``held``: their running sum), those kept: the likelier ones hold
        less than top_p."""
        return (held - values < self.params.top_p) & (values > 0)

    @staticmethod
    def _all(like: torch.Tensor) -> torch.Tensor:
        """Every token id, for each row of ``like``."""
        return torch.arange(like.shape[-1]).expand(like.shape[0], -1)


class Decoder:
    """Decodes many prompts' samples through ``slots`` sequences at once (see the module's docstring)."""

    def __init__(self, model, pad_token_id: int, eos_ids: set[int], slots: int):
        self.model, self.pad, self.eos_ids, self.slots = model, pad_token_id, eos_ids, slots
        model.set_attn_implementation(ROW_ATTENTION)
        self.cache_arg = cache_argument(model)
        accepted = inspect.signature(model.forward).parameters
        self.last_only = {"logits_to_keep": 1} if "logits_to_keep" in accepted else {}

    @torch.inference_mode()
    def run(
        self, jobs: list[tuple[GenerationRequest, list[int]]], params: SamplingParams, ended: Callable[[Row], bool]
    ) -> Iterator[Row]:
        """Every (request, prompt ids) job's ``request.params.n`` samples, in the order they end: at an EOS, at
        ``params.max_new_tokens``, or where ``ended(row)`` (a stop string) says so."""
        sampler = Sampler(params)
        waiting = deque((request, ids, sample) for request, ids in jobs for sample in range(request.params.n))
        rows: list[Row | None] = []
        cache: Cache | None = None
        mask = torch.zeros(0, 0, dtype=torch.long)
        logits = torch.zeros(0, 0)
        while waiting or any(row is not None for row in rows):
            if waiting and (None in rows or len(rows) < self.slots):
                cache, mask, logits, rows = self._admit(waiting, cache, mask, logits, rows)
            active = [i for i, row in enumerate(rows) if row is not None]
            picks = sampler(logits[active], [rows[i] for i in active])  # type: ignore[misc]
            for index, token in zip(active, picks, strict=True):
                row = rows[index]
                assert row is not None
                if params.top_logprobs > 0:
                    row.logits.append(logits[index])
                row.tokens.append(token)
                if token in self.eos_ids or len(row.tokens) >= params.max_new_tokens or ended(row):
                    rows[index] = None
                    yield row
            if not waiting and rows.count(None) * 2 >= len(rows) and any(row is not None for row in rows):
                cache, mask, logits, rows = self._compact(cache, mask, logits, rows)
            if any(row is not None for row in rows):
                logits, mask = self._step(cache, mask, rows)

    def _prefill(self, ids: list[int]) -> tuple[DynamicCache, torch.Tensor]:
        """One prompt alone: its KV (a fresh cache) and its next-token logits."""
        cache = DynamicCache(config=self.model.config)
        device = self.model.device
        output = self.model(
            input_ids=torch.tensor([ids], device=device),
            use_cache=True,
            **{self.cache_arg: cache},
            **self.last_only,
        )
        return cache, output.logits[0, -1].float().cpu()

    def _admit(self, waiting, cache, mask, logits, rows):
        """Fill free slots with waiting samples: each new prompt prefilled once, its KV copied to its samples'
        slots, right-aligned with the rows already running."""
        free = [i for i, row in enumerate(rows) if row is None] + list(range(len(rows), self.slots))
        admitted: list[tuple[int, Row, DynamicCache, torch.Tensor]] = []
        prefilled: dict[int, tuple[DynamicCache, torch.Tensor]] = {}
        while waiting and free:
            request, ids, sample = waiting.popleft()
            if id(ids) not in prefilled:
                prefilled = {id(ids): self._prefill(ids)}  # the samples of a prompt wait next to each other
            prompt_cache, prompt_logits = prefilled[id(ids)]
            generator = torch.Generator().manual_seed(row_seed(request.params.seed, request.request_id, sample))
            admitted.append((free.pop(0), Row(request, sample, ids, generator), prompt_cache, prompt_logits))
        width = mask.shape[1]
        longest = max(len(row.prompt) for _, row, _, _ in admitted)
        slots = max(len(rows), max(slot for slot, _, _, _ in admitted) + 1)
        if cache is None:
            cache = Cache(layers=[self._empty_layer(admitted[0][2].layers[i]) for i in range(len(admitted[0][2]))])
        if longest > width or slots > len(rows):  # more columns on the left, or more slots
            columns = max(longest, width)
            for layer in cache.layers:
                layer.relayout(columns, slots)
            mask = torch.cat([torch.zeros(mask.shape[0], columns - width, dtype=torch.long), mask], dim=1)
            mask = torch.cat([mask, torch.zeros(slots - mask.shape[0], columns, dtype=torch.long)], dim=0)
            grown = torch.zeros(slots, admitted[0][3].shape[-1])
            if logits.numel():
                grown[: logits.shape[0]] = logits
            logits = grown
            rows = rows + [None] * (slots - len(rows))
        columns = mask.shape[1]
        for slot, row, prompt_cache, prompt_logits in admitted:
            length = len(row.prompt)
            for layer, source in zip(cache.layers, prompt_cache.layers, strict=True):
                layer.buffer_keys[slot, :, layer.end - length : layer.end] = source.keys[0]
                layer.buffer_values[slot, :, layer.end - length : layer.end] = source.values[0]
            mask[slot] = 0
            mask[slot, columns - length :] = 1
            logits[slot] = prompt_logits
            rows[slot] = row
        return cache, mask, logits, rows

    @staticmethod
    def _empty_layer(like: DynamicLayer) -> SlotLayer:
        shape = (0, like.keys.shape[1], 0, like.keys.shape[3])
        dtype = torch.float32 if like.keys.device.type == "cpu" else like.keys.dtype
        return SlotLayer(like.keys.new_zeros(shape, dtype=dtype), like.values.new_zeros(shape, dtype=dtype), 0, 0)

    def _compact(self, cache, mask, logits, rows):
        """Keep only the running rows, and only the columns they use."""
        keep = torch.tensor([i for i, row in enumerate(rows) if row is not None])
        mask = mask[keep]
        used = mask.shape[1] - int(mask.sum(0).nonzero()[0])
        for layer in cache.layers:
            layer.relayout(used, len(keep), keep)
        return cache, mask[:, mask.shape[1] - used :], logits[keep], [rows[i] for i in keep.tolist()]

    def _step(self, cache, mask, rows) -> tuple[torch.Tensor, torch.Tensor]:
        """One token for every slot (a free slot decodes padding, masked out): the next logits of every slot and
        the mask with the new column."""
        device = self.model.device
        last = [row.tokens[-1] if row is not None else self.pad for row in rows]
        positions = [len(row.prompt) + len(row.tokens) - 1 if row is not None else 0 for row in rows]
        step_mask = torch.cat([mask, torch.tensor([[int(r is not None)] for r in rows], dtype=torch.long)], dim=1)
        output = self.model(
            input_ids=torch.tensor(last, device=device)[:, None],
            attention_mask=step_mask.to(device),
            position_ids=torch.tensor(positions, device=device)[:, None],
            use_cache=True,
            **{self.cache_arg: cache},
        )
        return output.logits[:, -1].float().cpu(), step_mask
