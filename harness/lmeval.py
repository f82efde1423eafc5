"""lm-evaluation-harness backend `lch`: any lm-eval task on an lch-loaded model (attention variant, RoPE base).

    lch lm-eval --model lch --model_args "pretrained=reference/softmax,attention=ssmax(s=auto),rope_theta=500000" \
        --tasks wikitext --device cpu

Importing this module registers the backend with lm-eval (the `register_model("lch")` decorator). lm-eval
0.4.13 loads no entry points for models (its registry accepts lazy "module:Class" placeholders, but only
for the names lm-eval lists itself), so plain `lm_eval --model lch` cannot find it there; `lch lm-eval ...`
(harness.cli.lmeval) imports this module and then runs lm-eval's own CLI, and in Python
`import harness.lmeval` comes before `lm_eval.simple_evaluate(model="lch", ...)`. The package also
declares the entry point `lm_eval.models: lch = harness.lmeval:LchLM` for lm-eval releases that read it.

The backend is lm-eval's HFLM around the model `harness.models.loading` built (variant applied, RoPE override in
force) and its tokenizer; three things follow lch rather than HFLM:

- loglikelihood_rolling scores a document as lch's position_loss does: the tokenizer's own ids (BOS once if
  the tokenizer adds one), the first id conditioning the rest, no extra prefix token. HFLM prepends its
  prefix_token_id (BOS) to ids that already start with BOS and scores that second BOS. Documents longer
  than `max_length` are split into lm-eval's rolling windows as usual.
- generate_until decodes greedily with harness.inference.decode (one prefill per prompt with a rewindable KV cache,
  no padding, no `generate`), stopping at EOS, at any `until` string or after max_gen_toks tokens.
- unknown or bad model_args are a UserError (one line; `lch lm-eval` exits 2 before lm-eval starts).

loglikelihood (multiple-choice) requests are HFLM's own: the tokenizer's own ids for context + continuation.
"""

from __future__ import annotations

import difflib

from harness.errors import UserError

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as e:  # pragma: no cover - only without the extra
    raise UserError("the lm-eval backend needs lm-evaluation-harness: "
                    f"pip install 'long-context-harness[lmeval]' ({e})") from None

MODEL_ARGS = {
    "pretrained": "checkpoint: local directory, hub id or reference/NAME (required)",
    "attention": "attention spec, e.g. softmax, ssmax, ssmax(s=auto), ssmax(s=0.3)",
    "rope_theta": "RoPE base of the full-context layers at evaluation",
    "training_length": "the model's training length (ssmax(s=auto), logn); default from its config",
    "dtype": "float32 (default), bfloat16, float16 or auto",
    "device": "cpu, cuda, cuda:N or auto (default: lm-eval's --device, cpu without CUDA)",
    "max_length": "tokens per window / context limit (default: the config's context length)",
    "max_gen_toks": "generation budget when a task gives none (256)",
    "batch_size": "loglikelihood batch size (default: lm-eval's --batch_size)",
    "max_batch_size": "(lm-eval's --max_batch_size)",
    "allow_pickle": "allow pickle weights (trusted checkpoints only)",
    "trust_remote_code": "allow checkpoint code (auto_map)",
}


def _int_arg(name: str, value, minimum: int = 1) -> int | None:
    if value is None:
        return None
    try:
        number = int(value) if not isinstance(value, bool) and float(value) == int(float(value)) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or number < minimum:
        raise UserError(f"lch model_args: {name} must be an integer >= {minimum}, got {value!r}")
    return number


def _float_arg(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"lch model_args: {name} must be a number, got {value!r}") from None


def _bool_arg(name: str, value) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no", "none"):
        return False
    raise UserError(f"lch model_args: {name} must be true or false, got {value!r}")


def check_model_args(args: dict) -> None:
    """UserError for an unknown key (with the closest known one) or a missing pretrained."""
    for key in args:
        if key not in MODEL_ARGS:
            close = difflib.get_close_matches(key, list(MODEL_ARGS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown lch model_args key {key!r}{hint} Known: {', '.join(MODEL_ARGS)}")
    if args.get("pretrained") in (None, ""):
        raise UserError("lch model_args need pretrained=DIR|reference/NAME|org/name, "
                        "e.g. --model_args pretrained=reference/softmax,attention=ssmax(s=auto)")


def _fallback_device(device) -> str:
    """lm-eval's --device (default cuda:0) for lch: kept if usable, else cpu (as HFLM falls back)."""
    import torch

    if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
        return "cpu"
    return str(device)


def describe(args: dict, lm_eval_device=None):
    """The lch ModelInfo that model_args ask for (validated, no weights loaded): UserError on bad input."""
    from harness.models.checkpoint import describe_model

    check_model_args(args)
    attention = args.get("attention")
    device = args.get("device")
    return describe_model(
        str(args["pretrained"]), None if attention in (None, "") else str(attention),
        _float_arg("rope_theta", args.get("rope_theta")),
        training_length=_int_arg("training_length", args.get("training_length"), minimum=2),
        dtype=None if args.get("dtype") is None else str(args["dtype"]),
        device=_fallback_device(lm_eval_device) if device is None else str(device),
        allow_pickle=_bool_arg("allow_pickle", args.get("allow_pickle", False)),
        trust_remote_code=_bool_arg("trust_remote_code", args.get("trust_remote_code", False)))


@register_model("lch")
class LchLM(HFLM):
    """HFLM over an lch-loaded model: attention variant and RoPE base in force, lch's BOS convention."""

    def __init__(self, pretrained=None, attention=None, rope_theta=None, training_length=None, dtype=None,
                 device=None, max_length=None, max_gen_toks=256, batch_size=1, max_batch_size=64,
                 allow_pickle=False, trust_remote_code=False, _lm_eval_device=None):
        import logging

        from harness.models.loading import load_described

        given = {"pretrained": pretrained, "attention": attention, "rope_theta": rope_theta,
                 "training_length": training_length, "dtype": dtype, "device": device,
                 "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code}
        args = {k: v for k, v in given.items() if v is not None}
        info = describe(args, _lm_eval_device)
        self._max_gen_toks = _int_arg("max_gen_toks", max_gen_toks)
        max_length = _int_arg("max_length", max_length, minimum=2)
        if not (isinstance(batch_size, int) or str(batch_size).isdigit()):
            raise UserError(f"lch model_args: batch_size must be an integer, got {batch_size!r} (auto is not supported)")
        self.loaded = load_described(info)
        hf_log = logging.getLogger("lm_eval.models.huggingface")
        level = hf_log.level
        hf_log.setLevel(logging.ERROR)  # "pretrained is not a str ... may be ignored": lch loaded it on purpose
        try:
            super().__init__(pretrained=self.loaded.model, tokenizer=self.loaded.tokenizer, backend="causal",
                             max_length=max_length, batch_size=int(batch_size),
                             max_batch_size=int(max_batch_size or 64), add_bos_token=None)
        finally:
            hf_log.setLevel(level)

    # lm-eval passes --batch_size/--max_batch_size/--device beside model_args; model_args win, and
    # lm-eval's device (default cuda:0) falls back to cpu without CUDA.
    @classmethod
    def create_from_arg_string(cls, arg_string, additional_config=None):
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict, additional_config=None):
        args = dict(arg_dict or {})
        check_model_args(args)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        if "device" in extra:
            extra["_lm_eval_device"] = extra.pop("device")
        if str(extra.get("batch_size", "")).startswith("auto"):
            extra.pop("batch_size")
        return cls(**{**extra, **args})

    @property
    def info(self):
        """The lch ModelInfo of the loaded model."""
        return self.loaded.info

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def get_model_info(self) -> dict:
        """lch's description of the model (attention, RoPE base, training length, fingerprint) for the results file."""
        out = {f"lch_{k}": v for k, v in self.info.as_dict().items()}
        out["model_num_parameters"] = sum(p.numel() for p in self._model.parameters())
        out["model_dtype"] = str(self._model.dtype)
        return out

    # ----------------------------------------------------------------------------------- perplexity

    def document_ids(self, string: str) -> list[int]:
        """A document's ids as lch scores it: the tokenizer's own (BOS once if it adds one)."""
        return list(self.tokenizer(string)["input_ids"])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each document: ids[1:] given ids[0] (lch's per-document NLL total, negated)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        from tqdm import tqdm

        out = []
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="lch loglikelihood_rolling"):
            (string,) = request.args
            ids = self.document_ids(string)
            total = 0.0
            if len(ids) >= 2:
                windows = [(None, *make_disjoint_window(w)) for w in get_rolling_token_windows(
                    token_list=ids[1:], prefix_token=ids[0], max_seq_len=self.max_length, context_len=1)]
                for i in range(0, len(windows), self.batch_size):
                    batch = windows[i:i + self.batch_size]
                    scored = self._loglikelihood_tokens(requests=batch, disable_tqdm=True, override_bs=len(batch))
                    total += sum(logprob for logprob, _ in scored)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
            out.append(total)
        return out

    # ----------------------------------------------------------------------------------- generation

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations with harness.inference.decode (the loaded attention variant), cut at the first stop string."""
        from lm_eval.models.utils import (
            handle_stop_sequences,
            normalize_gen_kwargs,
            postprocess_generated_text,
        )
        from tqdm import tqdm

        from harness.inference.decode import greedy_answer

        eos_id = self.tokenizer.eos_token_id
        eos = self.tok_decode(eos_id, skip_special_tokens=False) if eos_id is not None else None
        out = []
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="lch generate_until"):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs or {}), self.max_gen_toks)
            if kwargs.get("do_sample") and float(kwargs.get("temperature") or 0.0) > 0:
                raise UserError("the lch backend decodes greedily; this task asks for sampling "
                                "(set --gen_kwargs do_sample=false or temperature=0)")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            n_new = int(kwargs.pop("max_gen_toks"))
            room = self.max_length - n_new
            if room < 1:
                raise UserError(f"max_gen_toks={n_new} leaves no room for the prompt in max_length={self.max_length}; "
                                "raise max_length in --model_args")
            ids = self.tok_encode(context, left_truncate_len=room)
            stops = [s for s in until if s]

            def stop(tokens: list[int], stops=stops) -> bool:
                text = self.tok_decode(tokens)
                return any(s in text for s in stops)

            tokens = greedy_answer(self.model, ids, n_new, eos_token_id=eos_id, stop=stop)
            text = postprocess_generated_text(self.tok_decode(tokens), stop=until, think_end_token=None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


__all__ = ["MODEL_ARGS", "LchLM", "check_model_args", "describe"]
