"""The recommenders as Flax modules over the graphs: the LightGCN encoder and CIKGRec (`cikgrec`),
the SimGCL and KGAT baselines (`baselines`), and every loss they train with (`losses`)."""
