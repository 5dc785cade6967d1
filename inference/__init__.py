"""LLM user-interest generation and structuring into interest nodes (docs/method.md §9).

Pipeline: histories (train.txt) -> prompts -> OpenAI-Batch requests -> backend (vLLM offline, any
OpenAI-compatible endpoint, or a launched vLLM server) -> durable results JSONL -> parsed phrases ->
clustered interest nodes in `user_interest_clustered.txt` format.

This package depends only on numpy / scikit-learn / openai / tqdm / ml-collections; vLLM is imported
lazily by the backends that need it.
"""
