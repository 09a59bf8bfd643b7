"""Executes the scheduler's steps on one device: weights, KV cache, forward, sampling.

The runner keeps each live sequence's tokens and block table between steps
(`SequenceTable`), so a `StepInput` carries only deltas (see `step.py`). It
holds no policy: it checks a step is executable (known sequences, blocks in
range and covering every slot, budgets respected) and runs exactly that.

Forked sequences (`parent_seq_id`) inherit the parent's *full* blocks for
their tokens; the scheduler appends the fork's own tail block (usually the
copy-on-write destination of a `block_copies` pair) through `new_block_ids`.

In a tensor-parallel group every rank runs its own runner on the same calls
(`group.py`), each with its share of the weights and KV heads; rank 0 draws
the sampled tokens and the other ranks receive them, so all keep the same
sequences.
"""

from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
import torch

from cairn.common.errors import FailedPrecondition, InvalidArgument
from cairn.services.worker.cuda_graphs import DecodeGraphs
from cairn.services.worker.distributed import TensorParallel
from cairn.services.worker.engine_config import EngineConfig
from cairn.services.worker.input_batch import HostBatch, InputBatchBuilder, PromptLogprobSpan
from cairn.services.worker.kv_cache import KVCache, accelerator_kv_budget, num_blocks_for, rank_cache_config
from cairn.services.worker.loader import build_model, init_dummy_weights, load_model, resolve_model_path
from cairn.services.worker.lora import LoadedAdapter, LoRAAdapters
from cairn.services.worker.models import LlamaForCausalLM, ModelConfig
from cairn.services.worker.quantization import (
    KVCacheQuant,
    checkpoint_quantization,
    engine_quantization,
    init_dummy_quantized,
    resolve_kv_cache,
)
from cairn.services.worker.sampler import Sampler, SamplerOutput, SamplingBatch, prompt_logprobs
from cairn.services.worker.sampling_params import SamplingParams
from cairn.services.worker.sequence_table import SeqState, SequenceTable
from cairn.services.worker.step import (
    NewSequence,
    SampledToken,
    ScheduledSeq,
    SeqOutput,
    StepInput,
    StepOutput,
    TokenLogprob,
)

log = logging.getLogger(__name__)


class ModelRunner:
    def __init__(
        self, config: EngineConfig, compile_mode: str | None = None, tp: TensorParallel | None = None
    ) -> None:
        """`compile_mode`: torch.compile mode for the decode step captured in CUDA graphs (e.g.
        "max-autotune-no-cudagraphs"); None captures the eager kernels. `tp`: this rank of a
        tensor-parallel group of `config.tensor_parallel_size` ranks (None: a single device)."""
        self.tp = tp or TensorParallel()
        if self.tp.size != config.tensor_parallel_size:
            raise InvalidArgument(
                f"tensor_parallel_size {config.tensor_parallel_size} needs a group of that many ranks, "
                f"this runner has {self.tp.size}: tensor-parallel workers start as a group "
                "(the scheduler's Ray launcher, or group.spawn_local_group)"
            )
        if self.tp.size > 1 and config.max_loras:
            raise InvalidArgument(
                "LoRA adapters are served at tensor_parallel_size 1 only: set max_loras to 0, "
                "or serve the adapters from single-device replicas"
            )
        self.config = config
        self.compile_mode = compile_mode
        self.device = config.torch_device()
        self.block_size = config.block_size
        self.sampler = Sampler()
        self.model: LlamaForCausalLM | None = None
        self.kv_cache: KVCache | None = None
        self.graphs: DecodeGraphs | None = None
        self.num_blocks = 0
        self.weight_bytes = 0
        self.kv_quant: KVCacheQuant | None = None
        self.peak_activation_bytes = 0
        self.lora: LoRAAdapters | None = None

    # -- setup ---------------------------------------------------------------------------------

    def load(self) -> None:
        config = self.config
        if self.model is not None:
            raise FailedPrecondition("a model is already loaded on this worker")
        self.model_dir = resolve_model_path(config.model, config.model_cache_dir)
        self.model_config = model_config = ModelConfig.from_dir(self.model_dir)
        self.dtype = config.torch_dtype(model_config.checkpoint_dtype, self.device)
        limit = model_config.max_model_len
        if config.max_model_len is not None and config.max_model_len > limit:
            raise InvalidArgument(
                f"max_model_len {config.max_model_len} exceeds what the model supports ({limit})"
            )
        self.max_model_len = config.max_model_len or limit
        self.eos_token_id = model_config.eos_token_ids[0] if model_config.eos_token_ids else None
        torch.manual_seed(config.seed)
        dummy = config.load_format == "dummy"
        declared = checkpoint_quantization(json.loads((self.model_dir / "config.json").read_text()))
        self.quantization = quant = engine_quantization(config.quantization, declared, dummy)
        self.cache_config = rank_cache_config(model_config, self.tp.size)
        if dummy:
            self.model = build_model(
                model_config, self.device, self.dtype, self.max_model_len, quant, self.tp
            )
            init_dummy_weights(self.model, config.seed)
            init_dummy_quantized(self.model, config.seed)
        else:
            self.model = load_model(
                self.model_dir, model_config, self.device, self.dtype, self.max_model_len, quant, self.tp
            )
        self.kv_quant = resolve_kv_cache(config.kv_cache_dtype, quant, self.model)
        if config.max_loras:
            self.lora = LoRAAdapters(self.model, config.max_loras, config.max_lora_rank, str(config.model))
        tensors = itertools.chain(self.model.parameters(), self.model.buffers())
        self.weight_bytes = sum(t.nbytes for t in tensors)
        log.info(
            "loaded %s (%s) on %s as %s, quantization %s: %.2f GiB of weights",
            self.model_dir,
            model_config.architecture,
            self.device,
            self.dtype,
            quant.name,
            self.weight_bytes / 2**30,
        )

    def profile_and_allocate_kv_cache(self) -> int:
        """Sizes and allocates the KV cache (then captures CUDA graphs); returns the block count.

        On an accelerator a full-size dummy step measures the peak activation
        memory, and `gpu_memory_utilization` of the device minus that peak
        goes to blocks (the smallest budget of a tensor-parallel group's ranks, so
        all have the same count). On the CPU the size is `cpu_kv_cache_gb`.
        """
        if self.model is None:
            raise FailedPrecondition("load() the model before allocating the KV cache")
        config, cache_config = self.config, self.cache_config
        if config.num_blocks is not None:
            num_blocks = config.num_blocks
        elif self.device.type == "cpu":
            num_blocks = num_blocks_for(
                int(config.cpu_kv_cache_gb * 2**30), cache_config, self.block_size, self.dtype, self.kv_quant
            )
        else:
            num_blocks = self._profile_num_blocks()
        self._allocate(num_blocks)
        if self.device.type == "cuda" and not config.enforce_eager:
            self.capture_graphs()
        log.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB); CUDA graphs for batch sizes %s",
            num_blocks,
            self.block_size,
            self.kv_cache.nbytes / 2**30,
            self.cuda_graph_batch_sizes,
        )
        return num_blocks

    def capture_graphs(self) -> None:
        """Captures the decode CUDA graphs, again after a kernel switch (`kernels.triton_gemv`)."""
        self.graphs = None
        torch.cuda.empty_cache()
        self.graphs = DecodeGraphs(
            self.model,
            self.kv_cache.layers,
            self.config.max_num_seqs,
            self.table.max_blocks_per_seq,
            self.compile_mode,
            self.lora,
        )
        self.graphs.capture()

    @property
    def kv_cache_bytes(self) -> int:
        return 0 if self.kv_cache is None else self.kv_cache.nbytes

    @property
    def cuda_graph_batch_sizes(self) -> list[int]:
        return [] if self.graphs is None else list(self.graphs.sizes)

    def _allocate(self, num_blocks: int) -> None:
        config = self.config
        self.kv_cache = None
        self.kv_cache = KVCache(
            self.cache_config, num_blocks, self.block_size, self.dtype, self.device, self.kv_quant
        )
        self.num_blocks = num_blocks
        self.table = SequenceTable(
            self.max_model_len, self.block_size, num_blocks, self.model_config.vocab_size, config.max_num_seqs
        )
        self.builder = InputBatchBuilder(
            self.table, config.max_num_batched_tokens, config.max_num_seqs, self.device, config.max_loras
        )

    def _profile_num_blocks(self) -> int:
        """One step at the configured maximum (max_num_batched_tokens over max_num_seqs
        sequences, each sampled with top-p) on a throwaway cache just big enough for it."""
        config = self.config
        num_seqs = min(config.max_num_seqs, config.max_num_batched_tokens)
        per_seq = min(config.max_num_batched_tokens // num_seqs, self.max_model_len)
        blocks_per_seq = -(-per_seq // self.block_size)
        module = torch.get_device_module(self.device)
        module.empty_cache()
        module.reset_peak_memory_stats(self.device)
        self._allocate(num_seqs * blocks_per_seq)
        profile_bytes = self.kv_cache.nbytes
        params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=1)
        self.step(
            StepInput(
                new_seqs=[NewSequence(i, [0] * per_seq, per_seq, params) for i in range(num_seqs)],
                scheduled=[
                    ScheduledSeq(i, 0, per_seq, list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)))
                    for i in range(num_seqs)
                ],
            )
        )
        module.synchronize(self.device)
        self.peak_activation_bytes = (
            module.max_memory_allocated(self.device) - profile_bytes - self.weight_bytes
        )
        self.kv_cache = None
        module.empty_cache()
        budget = self.tp.min(
            accelerator_kv_budget(
                self.device, config.gpu_memory_utilization, self.weight_bytes + self.peak_activation_bytes
            )
        )
        log.info(
            "profiled %d tokens in %d sequences: %.2f GiB peak activations, %.2f GiB left for KV blocks",
            num_seqs * per_seq,
            num_seqs,
            self.peak_activation_bytes / 2**30,
            budget / 2**30,
        )
        return num_blocks_for(budget, self.cache_config, self.block_size, self.dtype, self.kv_quant)

    # -- LoRA adapters -------------------------------------------------------------------------

    def load_adapter(self, name: str, directory: Path, source: str | None = None) -> LoadedAdapter:
        """Loads the PEFT adapter in `directory` into the pool as `name` (evicting the least
        recently used adapter no live sequence runs with); `source` is what to report it loaded
        from (a registry reference), by default the directory."""
        lora = self._lora_enabled()
        held = self.table.held_lora_slots() if self.kv_cache is not None else set()
        return lora.load(name, Path(directory), held, source)

    def unload_adapter(self, name: str) -> bool:
        """Frees `name`'s slot; False if it was not loaded. FailedPrecondition while a live
        sequence runs with it."""
        lora = self._lora_enabled()
        held = self.table.held_lora_slots() if self.kv_cache is not None else set()
        return lora.unload(name, held)

    @property
    def adapters(self) -> list[LoadedAdapter]:
        return [] if self.lora is None else self.lora.adapters

    def _lora_enabled(self) -> LoRAAdapters:
        if self.model is None:
            raise FailedPrecondition("load() the model before loading adapters")
        if self.lora is None:
            raise FailedPrecondition("LoRA is disabled on this worker (max_loras is 0)")
        return self.lora

    def _lora_slot(self, new: NewSequence) -> int:
        if not new.adapter:
            return -1
        if self.lora is None:
            raise FailedPrecondition(
                f"sequence {new.seq_id} asks for adapter {new.adapter!r}, but LoRA is disabled on this worker"
            )
        return self.lora.slot(new.adapter)

    # -- steps ---------------------------------------------------------------------------------

    def free(self, seq_ids: list[int]) -> int:
        """Forgets finished or aborted sequences; returns how many were known."""
        return sum(self.table.remove(seq_id) for seq_id in seq_ids)

    @torch.inference_mode()
    def step(self, step: StepInput) -> StepOutput:
        if self.kv_cache is None:
            raise FailedPrecondition("the worker has no KV cache yet; load a model first")
        self.free(step.finished_seq_ids)
        for new in step.new_seqs:
            self.table.add(new, self._lora_slot(new))
        if step.block_copies:
            self._copy_blocks(step.block_copies)
        if not step.scheduled:
            return StepOutput()
        if step.num_steps < 1:
            raise InvalidArgument(f"num_steps must be >= 1, got {step.num_steps}")
        states, rows, starts, counts, sample = self._admit(step.scheduled, step.num_steps)
        if step.num_steps > 1:
            return self._multi_step(states, rows, starts, step.num_steps)
        batch = self.builder.build(states, rows, starts, counts, sample)
        logits, argmax = self._logits(batch)
        if logits is None:
            return StepOutput()
        outputs: dict[int, SeqOutput] = {}
        if batch.sampled:
            result = self._sample(batch.sampled, logits, argmax, batch.sample_rows)
            token_ids = result.token_ids.tolist()
            self.table.append_tokens(batch.sampled, batch.sampled_rows, [[t] for t in token_ids])
            for state, token in zip(
                batch.sampled, self._tokens(batch.sampled, token_ids, result), strict=True
            ):
                outputs[state.seq_id] = SeqOutput(state.seq_id, tokens=[token])
        for span in batch.prompt_logprobs:
            output = outputs.setdefault(span.state.seq_id, SeqOutput(span.state.seq_id))
            output.prompt_logprobs = self._prompt_logprobs(logits, span)
        return StepOutput(list(outputs.values()))

    def _copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        flat = np.asarray(pairs, dtype=np.int64)
        if flat.min() < 0 or flat.max() >= self.num_blocks:
            raise InvalidArgument(f"block_copies must name blocks in [0, {self.num_blocks}), got {pairs[:5]}")
        self.kv_cache.copy_blocks(pairs)

    def _admit(
        self, scheduled: list[ScheduledSeq], num_steps: int
    ) -> tuple[list[SeqState], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Checks the step against each sequence's state, then appends its new blocks.

        Returns (states, table rows, tokens cached, tokens to compute, sample flags).
        """
        config, table = self.config, self.table
        states = [table.get(s.seq_id) for s in scheduled]
        count = len(states)
        if count > config.max_num_seqs:
            raise InvalidArgument(f"{count} sequences in one step; max_num_seqs is {config.max_num_seqs}")
        if len({s.seq_id for s in scheduled}) != count:
            raise InvalidArgument("a sequence is scheduled twice in one step")
        rows = np.fromiter((st.row for st in states), dtype=np.int64, count=count)
        starts = np.fromiter((s.num_computed_tokens for s in scheduled), dtype=np.int64, count=count)
        counts = np.fromiter((s.num_scheduled_tokens for s in scheduled), dtype=np.int64, count=count)
        sample = np.fromiter((s.sample for s in scheduled), dtype=bool, count=count)
        added = np.fromiter((len(s.new_block_ids) for s in scheduled), dtype=np.int64, count=count)
        known = table.num_tokens[rows]
        blocks = table.num_blocks[rows] + added
        ends = starts + counts
        # The last of num_steps tokens is sampled, never computed: its slot is not needed.
        last_slot = ends + num_steps - 1
        problems = [
            (starts < 0, "num_computed_tokens is negative"),
            (counts < 1, "num_scheduled_tokens must be >= 1"),
            (ends > known, "schedules tokens the worker does not have"),
            (last_slot > self.max_model_len, f"would pass max_model_len ({self.max_model_len})"),
            (blocks * self.block_size < last_slot, "has too few blocks for the tokens scheduled"),
            (blocks > table.max_blocks_per_seq, "holds more blocks than max_model_len needs"),
            (sample & (ends != known), "samples before the end of its known tokens"),
        ]
        if num_steps > 1:
            problems.append(
                (~sample | (counts != 1), "is not a sampled decode, which multi-step decode needs")
            )
        # One reduction for the common case, a valid step; the loop only names what failed.
        if np.logical_or.reduce([bad for bad, _ in problems]).any():
            for bad, message in problems:
                if bad.any():
                    raise InvalidArgument(f"sequence {scheduled[int(np.argmax(bad))].seq_id} {message}")
        if (num_tokens := int(counts.sum())) > config.max_num_batched_tokens:
            limit = config.max_num_batched_tokens
            raise InvalidArgument(f"{num_tokens} tokens in one step; max_num_batched_tokens is {limit}")
        if added.any():
            new_blocks = [b for s in scheduled for b in s.new_block_ids]
            if not 0 <= min(new_blocks) <= max(new_blocks) < self.num_blocks:
                raise InvalidArgument(f"new_block_ids must be in [0, {self.num_blocks})")
            for state, s in zip(states, scheduled, strict=True):
                if s.new_block_ids:
                    table.append_blocks(state, s.new_block_ids)
        return states, rows, starts, counts, sample

    def _logits(
        self, batch: HostBatch, input_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(logits of the rows that need them, `batch.logits_indices`; their argmax, or None).

        A decode batch the CUDA graphs fit gets both from one replay, the logits
        in the model's dtype. Otherwise an eager forward gives float32 logits and
        no argmax, or (None, None) when no row needs logits. `input_ids` (on the
        device) replaces the host's token ids: multi-step decode feeds back
        tokens the host has not seen yet.
        """
        graphs = self.graphs
        if graphs is not None and batch.logits_indices is None and graphs.fits(batch):
            return graphs.run(batch, input_ids)
        inputs = self.builder.upload(batch)
        if input_ids is not None:
            inputs.input_ids.copy_(input_ids)
        if self.lora is not None:
            self.lora.set_mapping(inputs.lora)
        hidden = self.model(inputs.input_ids, inputs.positions, inputs.meta, self.kv_cache.layers)
        if not batch.sampled and not batch.prompt_logprobs:
            return None, None
        if inputs.logits_indices is not None:
            hidden = hidden[inputs.logits_indices]
        return self.model.compute_logits(hidden), None

    def _sample(
        self,
        states: list[SeqState],
        logits: torch.Tensor,
        argmax: torch.Tensor | None,
        sample_rows: np.ndarray | None = None,
    ) -> SamplerOutput:
        """Next tokens of `states` from their logits rows (`sample_rows`, None: every row);
        a greedy batch whose argmax the graph already took samples nothing."""
        sampling = self._sampling_batch(states)
        if argmax is not None and sampling.argmax_only:
            return SamplerOutput(token_ids=argmax)
        if sample_rows is not None:
            logits = logits[torch.from_numpy(sample_rows).to(self.device)]
        return self._draw(logits, sampling)

    def _draw(self, logits: torch.Tensor, sampling: SamplingBatch) -> SamplerOutput:
        """The sampler's tokens. In a tensor-parallel group rank 0 draws them and the other
        ranks receive them, so every rank feeds back the same tokens whatever randomness
        is involved; an argmax needs no exchange, every rank holding the same logits."""
        tp = self.tp
        if tp.size == 1 or sampling.argmax_only:
            return self.sampler(logits, sampling)
        if tp.is_leader:
            result = self.sampler(logits, sampling)
            tp.broadcast(result.token_ids)
            return result
        token_ids = torch.empty(logits.shape[0], dtype=torch.int64, device=logits.device)
        return SamplerOutput(token_ids=tp.broadcast(token_ids))

    def _multi_step(
        self, states: list[SeqState], rows: np.ndarray, starts: np.ndarray, num_steps: int
    ) -> StepOutput:
        """num_steps decodes in one call. When sampling is a plain argmax the
        tokens stay on the device, fed back into the next step's input, and
        reach the host once at the end; otherwise each step's tokens come back
        so penalties and seeds see them."""
        ones = np.ones(len(states), dtype=np.int64)
        flags = ones.astype(bool)
        sampling = self._sampling_batch(states)
        outputs = [SeqOutput(s.seq_id) for s in states]
        if sampling.argmax_only:
            previous = None
            device_tokens = []
            for k in range(num_steps):
                batch = self.builder.build(states, rows, starts + k, ones, flags)
                logits, argmax = self._logits(batch, previous)
                # A graph's argmax is its output buffer, overwritten by the next replay.
                previous = logits.argmax(dim=-1) if argmax is None else argmax.clone()
                device_tokens.append(previous)
            token_ids = torch.stack(device_tokens, dim=1).tolist()
            self.table.append_tokens(states, rows, token_ids)
            for output, tokens in zip(outputs, token_ids, strict=True):
                output.tokens = [SampledToken(t) for t in tokens]
            return StepOutput(outputs)
        for k in range(num_steps):
            if k:
                sampling = self._sampling_batch(states)
            logits, _ = self._logits(self.builder.build(states, rows, starts + k, ones, flags))
            result = self._draw(logits, sampling)
            token_ids = result.token_ids.tolist()
            self.table.append_tokens(states, rows, [[t] for t in token_ids])
            for output, token in zip(outputs, self._tokens(states, token_ids, result), strict=True):
                output.tokens.append(token)
        return StepOutput(outputs)

    # -- sampling ------------------------------------------------------------------------------

    def _sampling_batch(self, states: list[SeqState]) -> SamplingBatch:
        return SamplingBatch.build(
            [s.sampling for s in states],
            [s.prompt_ids for s in states],
            [s.output_ids for s in states],
            self.model_config.vocab_size,
            self.device,
            eos_token_id=self.eos_token_id,
        )

    def _tokens(
        self, states: list[SeqState], token_ids: list[int], result: SamplerOutput
    ) -> list[SampledToken]:
        if result.logprobs is None:
            return [SampledToken(t) for t in token_ids]
        logprobs, top_ids, top_logprobs = (
            t.tolist() for t in (result.logprobs, result.top_ids, result.top_logprobs)
        )
        tokens = []
        for i, state in enumerate(states):
            k = state.sampling.logprobs
            if k is None:
                tokens.append(SampledToken(token_ids[i]))
                continue
            top = [TokenLogprob(t, lp) for t, lp in zip(top_ids[i][:k], top_logprobs[i][:k], strict=True)]
            tokens.append(SampledToken(token_ids[i], logprobs[i], top))
        return tokens

    def _prompt_logprobs(self, logits: torch.Tensor, span: PromptLogprobSpan) -> list[SampledToken]:
        first = span.first_position + 1
        targets = self.table.token_ids[span.state.row, first : first + span.count].astype(np.int64)
        chosen, top_ids, top_logprobs = prompt_logprobs(
            logits[span.logits_row : span.logits_row + span.count],
            torch.from_numpy(targets).to(self.device),
            span.state.sampling.prompt_logprobs,
        )
        return [
            SampledToken(int(t), lp, [TokenLogprob(i, v) for i, v in zip(ids, values, strict=True)])
            for t, lp, ids, values in zip(
                targets, chosen.tolist(), top_ids.tolist(), top_logprobs.tolist(), strict=True
            )
        ]
