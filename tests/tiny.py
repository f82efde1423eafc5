"""Tiny random checkpoints and tokenizers built offline in temporary directories (for tests)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (AutoModelForCausalLM, Cohere2Config, CohereConfig, Exaone4Config, Gemma2Config,
                          Gemma3TextConfig, GemmaConfig, GlmConfig, GraniteConfig, HeliumConfig, LlamaConfig,
                          MistralConfig, Olmo2Config, OlmoConfig, Phi3Config, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen3Config, SmolLM3Config, StableLmConfig, Starcoder2Config)

from harness.attention import add_ssmax_parameters, attention_modules

SAMPLE_TEXT = (
    "def main(argv):\n    return 0\n\nclass Thing(object):\n    \"\"\"A thing.\"\"\"\n"
    "The special magic Tokyo number is: 8106422.\nQuestion: What is the special magic Paris number?\n"
    "Answer: The special magic Paris number is: 1234567.\n"
    "import os, sys\nfor i in range(10):\n    print(i, 'hello world')\n"
)

FAMILIES = {  # model_type -> config class (tests/test_families.py runs the matrix over these)
    "llama": LlamaConfig,
    "mistral": MistralConfig,
    "qwen2": Qwen2Config,
    "qwen3": Qwen3Config,
    "gemma": GemmaConfig,
    "gemma2": Gemma2Config,
    "gemma3_text": Gemma3TextConfig,
    "smollm3": SmolLM3Config,
    "phi3": Phi3Config,
    "olmo": OlmoConfig,
    "olmo2": Olmo2Config,
    "cohere": CohereConfig,
    "cohere2": Cohere2Config,
    "granite": GraniteConfig,
    "starcoder2": Starcoder2Config,
    "helium": HeliumConfig,
    "glm": GlmConfig,
    "exaone4": Exaone4Config,
    "stablelm": StableLmConfig,  # does not route attention through AttentionInterface: for the refusal tests
}

# Per-family defaults on top of the common tiny shape (families whose head_dim does not follow hidden/heads).
FAMILY_DEFAULTS = {
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "query_pre_attn_scalar": 8},
    "gemma3_text": {"head_dim": 8, "query_pre_attn_scalar": 8},
    "helium": {"head_dim": 8},
    "glm": {"head_dim": 8},
    "exaone4": {"head_dim": 8},
}


def build_tokenizer(kind: str = "bpe") -> PreTrainedTokenizerFast:
    """A small tokenizer from the reference pair's builder: `bpe` (vocabulary 400) or `byte` (one token per byte)."""
    from harness.reference.tokenizer import train_tokenizer

    return train_tokenizer([SAMPLE_TEXT * 3], vocab_size=400 if kind == "bpe" else 257)


def build_model(family: str = "llama", vocab_size: int = 400, *, ssmax: bool = False, bias: bool = False,
                training_length: int | None = 64, seed: int = 0, **overrides):
    """A tiny random causal LM of a RoPE decoder family (optionally with learned SSMax parameters)."""
    torch.manual_seed(seed)
    kwargs = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=vocab_size, max_position_embeddings=4096,
                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    kwargs.update(FAMILY_DEFAULTS.get(family, {}))
    kwargs.update(overrides)
    config = FAMILIES[family](**kwargs)
    if training_length:
        config.training_length = training_length
    model = AutoModelForCausalLM.from_config(config).eval()
    if ssmax:
        add_ssmax_parameters(model, 0.3, bias=bias, init_b=0.05)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, module in attention_modules(model):
                module.ssmax_s.copy_(torch.rand(module.ssmax_s.shape, generator=generator) * 0.5 + 0.1)
    return model


def save_checkpoint(path: Path, family: str = "llama", tokenizer: str = "bpe", **kwargs) -> Path:
    """Build a tiny model and its tokenizer and save both (safetensors) under `path`."""
    tok = build_tokenizer(tokenizer)
    model = build_model(family, vocab_size=len(tok), **kwargs)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)


class StubCache:
    """Stand-in KV cache for StubModel: the token ids seen so far (crops like transformers' caches)."""

    def __init__(self):
        self.ids = []

    def get_seq_length(self):
        return len(self.ids)

    def crop(self, n):
        assert n < 0  # transformers' convention: a negative count of tokens to remove
        del self.ids[n:]


class StubModel(torch.nn.Module):
    """A 'model' that reads its answer off the prompt text and emits it token by token (a perfect or wrong copier).

    answer_ids(prompt text) -> the ids it predicts after the prompt. A forward without a StubCache starts a
    new prompt (the harness starts each with a transformers cache); a forward with logits_to_keep=1 ends
    one (harness.inference.decode feeds a prompt, or its part after a shared prefix, that way; answers otherwise).
    """

    def __init__(self, tokenizer, answer_ids):
        super().__init__()
        self.tok, self.answer_ids, self.vocab = tokenizer, answer_ids, len(tokenizer)
        self.prompt_length = None

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, input_ids, cache=None, use_cache=True, logits_to_keep=0):
        from types import SimpleNamespace

        if not isinstance(cache, StubCache):
            cache = StubCache()
            self.prompt_length = input_ids.shape[1]
        start = len(cache.ids)
        cache.ids.extend(input_ids[0].tolist())
        if logits_to_keep == 1:
            self.prompt_length = len(cache.ids)
        target = self.answer_ids(self.tok.decode(cache.ids[: self.prompt_length]))
        logits = torch.zeros(1, input_ids.shape[1], self.vocab)
        for j in range(input_ids.shape[1]):
            k = start + j + 1 - self.prompt_length  # index in the answer of the token after position start + j
            if 0 <= k < len(target):
                logits[0, j, target[k]] = 30.0
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, cache=cache)
