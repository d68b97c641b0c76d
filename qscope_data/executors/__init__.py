"""Other executors of the encode stage (the local one is `qscope_data.encode.run_encode`): `ray` — Ray Data actors.
Each writes the same store through `qscope_data.store.StoreWriter` and encodes with `qscope_data.encode.encode_shard`."""
