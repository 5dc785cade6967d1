"""Running the one train step on several devices and hosts: data parallelism with `jax.pmap`
(`data_parallel`), the graph modes that shard the node table under `shard_map`
(`graph_parallel`), and the processes of a multi-host job (`distributed`)."""
