"""Prompt material: text corpora (`corpus`), haystacks cut to token-exact lengths (`haystack`), filler lines
(`filler`) and prompts assembled from them (`prompts`). Tokens in, tokens out; no model."""
