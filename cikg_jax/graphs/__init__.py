"""The Collaborative Interest Knowledge Graph: building it from a dataset (`cikg`), its normalised
propagation operator and sparse products (`propagation`), and the node orders, blocks and halo
exchange plans that split it over devices (`partition`, `halo`)."""
