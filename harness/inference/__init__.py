"""Running a model: forwards, greedy decoding and caches (`decode`), shared-prefix caches (`prefix_cache`),
per-position NLL with a chunked LM head (`nll`)."""
