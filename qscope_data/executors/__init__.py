"""Executors of the encode stage: `local` (this process) and `ray` (Ray Data actors). `qscope_data.encode.run` plans
the job once; an executor runs its pending shards, each with `qscope_data.encode.encode_shard` through the job's
`StoreWriter`, so both write the same store. `placement` runs other model-holding stages (synthesis) on Ray."""
