"""The encode stage's local executor: the model and SAEs loaded once in this process, the pending shards encoded one
after another (`qscope_data.encode.encode_shard`), progress on the caller's bar."""

from __future__ import annotations

import time
from dataclasses import dataclass

from qscope_data.encode import EncodeJob, EncodeOptions, ExecutorRun, check_compatible, describe_loaded, encode_shard, load_saes
from qscope_data.progress import Bar


@dataclass(frozen=True)
class LocalExecutor:
    """Runs a job here (CPU or one GPU, as `EncodeOptions.device` says)."""

    def check(self, options: EncodeOptions) -> None:
        """Nothing to check before planning: the model loads here, as the options say."""

    def run(self, job: EncodeJob, bar: Bar) -> ExecutorRun:
        from qscope_data.capture import check_layers, load_model
        from qscope_data.torch_dtypes import parse_dtype

        inputs, options = job.inputs, job.options
        start = time.perf_counter()
        lm = load_model(inputs.model, device=options.device, dtype=parse_dtype(options.dtype), revision=inputs.revision,
                        trust_remote_code=inputs.trust_remote_code)
        check_layers(lm, job.layers)
        saes = load_saes(inputs.sae, job.layers, device=options.device, k=inputs.sae_k)
        check_compatible(lm, saes)
        done = ExecutorRun(describe_loaded(lm, saes), load_seconds=time.perf_counter() - start)
        loop = time.perf_counter()
        for shard, columns in job.pending(on_skip=bar.skip):
            marker = encode_shard(lm, saes, shard, job.writer, options, columns,
                                  on_batch=lambda docs, tokens: bar.advance(docs, work=tokens))
            done.documents += marker.rows
            done.tokens += int(marker.stats.get("n_tokens", 0))
        done.encode_seconds = time.perf_counter() - loop
        return done
