"""SASFT inside TRL: an `SFTTrainer` whose loss is CE + λ · L_reduce (see `qscope_data.sasft.loss`).

Why a subclass and not a callback: the auxiliary term needs block n's output *with its graph* from the very forward
that produces the CE loss, and each example's language — neither reaches a callback. The subclass:

- tokenises conversations itself (chat template with `{% generation %}` markers, TRL's patched training template
  when the tokenizer's own lacks them), producing `input_ids`, `labels` (assistant-only when
  `args.assistant_only_loss`), `sasft_mask` (the positions the penalty counts: the assistant response, or every
  position but the first) and `sasft_lang` (the example's index among the plan's baseline languages, -1 for none);
  TRL sees a tokenised dataset and leaves it alone (so `args.assistant_only_loss` is applied here and then cleared);
- keeps `sasft_mask` / `sasft_lang` through TRL's column pruning (they are added to the signature columns, so
  `remove_unused_columns=True` keeps working) and through the collator (a wrapper pads them beside `input_ids`);
- hooks block n for the duration of `compute_loss` and adds λ · L_reduce to TRL's loss. Under gradient
  accumulation the term is divided by the number of micro-batches, like TRL's MoE aux loss.

Packing and padding-free batches are refused: they merge examples of different languages into one row.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from torch import nn
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import get_training_chat_template, has_generation_markers

from qscope_data.capture import edit_block_output, resolve_blocks
from qscope_data.errors import UsageError
from qscope_data.progress import Bar
from qscope_data.sasft.loss import SASFTLoss

Positions = Literal["response", "all"]
SASFT_COLUMNS = ["sasft_lang", "sasft_mask"]


def training_chat_template(tokenizer: Any) -> str | None:
    """A template that marks assistant text: the tokenizer's own, TRL's patched one for known families, or None."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    if has_generation_markers(template):
        return template if isinstance(template, str) else template["default"]
    try:
        return get_training_chat_template(tokenizer)
    except Exception:  # TRL knows only some template families
        return None


def tokenize_example(example: dict, tokenizer: Any, *, lang_index: dict[str, int], lang_field: str = "lang",
                     text_field: str = "text", positions: Positions = "response", assistant_only_loss: bool = False,
                     max_length: int | None = 1024, chat_template: str | None = None) -> dict:
    """One conversation or text → input_ids, labels, sasft_mask, sasft_lang (truncated to max_length, keeping the start).

    Conversations without `{% generation %}` support fall back to the last assistant turn: the tokens after the
    rendering of the conversation up to it with a generation prompt.
    """
    messages = example.get("messages")
    if messages:
        ids, response = _tokenize_messages(messages, tokenizer, chat_template)
    else:
        text = example.get(text_field)
        if not isinstance(text, str) or not text:
            raise UsageError(f"example {example.get('doc_id', '?')}: neither 'messages' nor text field '{text_field}'")
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
            ids = ids + [tokenizer.eos_token_id]
        response = [1] * len(ids)
    if max_length is not None:
        ids, response = ids[:max_length], response[:max_length]
    labels = [t if (r or not assistant_only_loss) else -100 for t, r in zip(ids, response)]
    mask = list(response) if positions == "response" else [0] + [1] * (len(ids) - 1)
    lang = example.get(lang_field)
    return {"input_ids": ids, "labels": labels, "sasft_mask": mask,
            "sasft_lang": lang_index.get(str(lang).strip().lower(), -1) if lang is not None else -1}


def _tokenize_messages(messages: list[dict], tokenizer: Any, chat_template: str | None) -> tuple[list[int], list[int]]:
    kwargs = {"chat_template": chat_template} if chat_template else {}
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=bool(chat_template), **kwargs)
    ids = list(out["input_ids"])
    mask = list(out.get("assistant_masks") or [])
    if any(mask):
        return ids, mask
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
    if last is None:
        return ids, [0] * len(ids)
    prefix = tokenizer.apply_chat_template(messages[:last], tokenize=True, add_generation_prompt=True,
                                           return_dict=True, **kwargs)["input_ids"]
    start = len(prefix) if list(prefix) == ids[: len(prefix)] else len(ids)
    return ids, [0] * start + [1] * (len(ids) - start)


class SASFTCollator:
    """Wraps TRL's collator: pads `sasft_mask` like `input_ids` (right, with 0) and stacks `sasft_lang`."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.base([{k: v for k, v in ex.items() if k not in SASFT_COLUMNS} for ex in examples])
        width = batch["input_ids"].shape[1]
        mask = torch.zeros(len(examples), width, dtype=torch.long)
        for i, ex in enumerate(examples):
            m = torch.as_tensor(ex["sasft_mask"][:width], dtype=torch.long)
            mask[i, : m.numel()] = m
        batch["sasft_mask"] = mask
        batch["sasft_lang"] = torch.tensor([int(ex["sasft_lang"]) for ex in examples], dtype=torch.long)
        return batch


class SASFTTrainer(SFTTrainer):
    """`trl.SFTTrainer` with the SASFT auxiliary loss. Extra arguments:

    sasft_loss: a `SASFTLoss` (e.g. `SASFTLoss.from_plan(dir)`); sasft_lambda: λ; sasft_positions: "response"
    (default) or "all"; sasft_lang_field: the dataset column with each example's language.
    Datasets may be raw (`messages` or text + the language column) or already tokenised with `tokenize_example`.
    """

    def __init__(self, model: Any, args: SFTConfig | None = None, *, sasft_loss: SASFTLoss, sasft_lambda: float = 1.0,
                 sasft_positions: Positions = "response", sasft_lang_field: str = "lang", train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None, **kwargs: Any) -> None:
        if sasft_positions not in ("response", "all"):
            raise UsageError(f"sasft positions must be 'response' or 'all', got {sasft_positions!r}")
        if sasft_lambda < 0:
            raise UsageError(f"sasft lambda must be ≥ 0, got {sasft_lambda}")
        if sasft_loss.layer is None:
            raise UsageError("the SASFT loss does not say which block it reads (layer=None)")
        args = copy.copy(args) if args is not None else SFTConfig(output_dir="sasft-out")
        if args.packing or args.padding_free:
            raise UsageError("SASFT needs one language per row: turn off packing / padding_free")
        if processing_class is None:
            from transformers import AutoTokenizer

            name = model if isinstance(model, str) else model.config._name_or_path
            processing_class = AutoTokenizer.from_pretrained(name)
        lang_index = {lang: i for i, lang in enumerate(sasft_loss.baseline_languages)}
        template = training_chat_template(processing_class)
        fn_kwargs = dict(tokenizer=processing_class, lang_index=lang_index, lang_field=sasft_lang_field,
                         text_field=args.dataset_text_field, positions=sasft_positions,
                         assistant_only_loss=args.assistant_only_loss, max_length=args.max_length, chat_template=template)
        train_dataset = _tokenized(train_dataset, fn_kwargs)
        if isinstance(eval_dataset, dict):
            eval_dataset = {k: _tokenized(v, fn_kwargs) for k, v in eval_dataset.items()}
        elif eval_dataset is not None:
            eval_dataset = _tokenized(eval_dataset, fn_kwargs)
        args.assistant_only_loss = False  # applied to `labels` above; TRL would reject a tokenised dataset otherwise
        self.sasft_loss = sasft_loss
        self.sasft_lambda = float(sasft_lambda)
        self.sasft_positions = sasft_positions
        self._sasft_blocks: nn.ModuleList | None = None
        super().__init__(model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, **kwargs)
        if self.padding_free:
            raise UsageError("SASFT needs one language per row: padding-free batches are not supported")
        self.data_collator = SASFTCollator(self.data_collator)
        hidden = self.model.config.get_text_config().hidden_size
        if hidden != sasft_loss.W_enc.shape[1]:
            raise UsageError(f"the SASFT plan's encoder rows have d_model {sasft_loss.W_enc.shape[1]}, "
                             f"the model's hidden size is {hidden}")
        self.sasft_loss.to(self.args.device)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, *(c for c in SASFT_COLUMNS if c not in self._signature_columns)]

    def _blocks(self, model: nn.Module) -> nn.ModuleList:
        if self._sasft_blocks is None:
            _, self._sasft_blocks = resolve_blocks(self.accelerator.unwrap_model(model))
            if not 0 <= self.sasft_loss.layer < len(self._sasft_blocks):
                raise UsageError(f"SASFT layer {self.sasft_loss.layer} is beyond the model's {len(self._sasft_blocks)} blocks")
        return self._sasft_blocks

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001 (TRL's signature)
        lang = inputs.pop("sasft_lang", None)
        mask = inputs.pop("sasft_mask", None)
        if lang is None or mask is None:
            raise UsageError("batch lacks sasft_lang / sasft_mask: build the dataset with SASFTTrainer or tokenize_example")
        captured: dict[str, torch.Tensor] = {}

        def keep(hidden: torch.Tensor, call: int) -> torch.Tensor:
            if call == 0:  # the training forward; later calls are metric re-forwards or checkpoint recomputation
                captured["h"] = hidden
            return hidden

        with edit_block_output(self._blocks(model), self.sasft_loss.layer, keep):
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        ce, outputs = (result if return_outputs else (result, None))
        if "h" not in captured:
            raise RuntimeError(f"block {self.sasft_loss.layer} did not run in the training forward")
        if model.training and torch.is_grad_enabled() and self.sasft_lambda > 0 and not captured["h"].requires_grad:
            raise UsageError("block output has no gradient graph (reentrant checkpointing or frozen layers below "
                             "block n?): the SASFT term would not train anything")
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.sasft_lambda > 0):
            parts = self.sasft_loss(captured["h"], lang, mask)
        steps = self.current_gradient_accumulation_steps if (num_items_in_batch is not None and model.training) else 1
        total = ce + (self.sasft_lambda / steps) * parts.loss if self.sasft_lambda > 0 else ce
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sasft_reduce"].append(float(parts.loss.detach()))
        self._metrics[mode]["sasft_tokens"].append(float(parts.tokens))
        self._metrics[mode]["ce_loss"].append(float(ce.detach()))
        return (total, outputs) if return_outputs else total


def _tokenized(dataset: Any, fn_kwargs: dict) -> Any:
    """Tokenise a raw dataset for SASFT (a dataset that already has `input_ids` must carry the SASFT columns)."""
    if dataset is None:
        return None
    cols = list(dataset.column_names or [])
    if "input_ids" in cols:
        missing = [c for c in SASFT_COLUMNS if c not in cols]
        if missing:
            raise UsageError(f"tokenised dataset lacks {', '.join(missing)}: tokenise it with tokenize_example")
        return dataset
    return dataset.map(tokenize_example, fn_kwargs=fn_kwargs, remove_columns=cols, desc="SASFT tokenise")


class TrainConfig(BaseModel):
    """`qscope sasft train` settings (the TRL ones it exposes; anything else: use SASFTTrainer directly)."""

    plan: Path
    sasft_lambda: float = Field(1.0, ge=0)
    positions: Positions = "response"
    languages: list[str] | None = None
    lang_field: str = "lang"
    text_field: str = "text"
    max_steps: int = -1
    epochs: float = Field(1.0, gt=0)
    learning_rate: float = Field(2e-5, gt=0)
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(1024, ge=2)
    assistant_only_loss: bool = False
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = True  # TRL's default: memory for ~20% speed
    logging_steps: int = Field(10, ge=1)
    save_model: bool = True


class RichProgress(TrainerCallback):
    """Steps, rate, ETA and the loss on the house progress line (`qscope_data.progress.Bar`) instead of tqdm."""

    def __init__(self) -> None:
        self._bar: Bar | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003 (transformers' signature)
        self._bar = Bar("SASFT train", state.max_steps, enabled=True, unit="steps").__enter__()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if self._bar is not None:
            self._bar.advance(state.global_step - self._bar.done)

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN003
        if self._bar is not None and logs and "loss" in logs:
            self._bar.note(f"loss {logs['loss']:.4f} reduce {logs.get('sasft_reduce', 0):.4f}")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def shard_paths(spec: str | Path | list) -> list[str]:
    """Training files. A `qscope curate` output folder yields its `data/` shards only — never `removed.parquet`
    or the `quarantine/` shards; another folder holding Parquet yields its Parquet files (not its JSON manifest or
    card); anything else resolves as any input does."""
    from qscope_data.inputs import resolve_paths

    out: list[str] = []
    for item in spec if isinstance(spec, (list, tuple)) else [spec]:
        folder = Path(item)
        shards: list[str] = []
        if folder.is_dir():
            data = folder / "data"
            if data.is_dir() and any(data.rglob("*.parquet")):
                shards = sorted(str(p) for p in data.rglob("*.parquet"))
            else:
                shards = sorted(str(p) for p in folder.rglob("*.parquet")
                                if p.name != "removed.parquet" and "quarantine" not in p.relative_to(folder).parts)
        out.extend(shards or resolve_paths(item))
    return out


def train(model_spec: str, data_spec: str | Path | list, out_dir: str | Path, config: TrainConfig,
          *, progress: bool = True) -> dict:
    """Fine-tune `model_spec` on curated shards (Parquet/JSONL with `messages` or text + a language column) with
    CE + λ · L_reduce; saves the model, tokenizer and `sasft_train.json` (config, plan, per-language counts, log)."""
    from datasets import Dataset

    from qscope_data.atomic import write_json, write_text
    from qscope_data.capture import load_model
    from qscope_data.inputs import Reject, input_fingerprint, iter_records

    out_dir = Path(out_dir)
    loss = SASFTLoss.from_plan(config.plan, config.languages)
    lm = load_model(model_spec)
    if not lm.is_causal:
        raise UsageError(f"model {model_spec} is {lm.architecture}, an encoder-only model: SASFT training needs a "
                         "causal LM (prepare works on encoder-only models; train and eval do not)")
    if loss.layer >= lm.n_layers:
        raise UsageError(f"the plan reads block {loss.layer} but {model_spec} has {lm.n_layers} blocks")
    paths = shard_paths(data_spec)
    lang_index = {lang: i for i, lang in enumerate(loss.baseline_languages)}
    template = training_chat_template(lm.tokenizer)
    rows: list[dict] = []
    rejects: list[Reject] = []
    counts: dict[str, int] = {}
    for rec in iter_records(paths, text_field=config.text_field):
        if isinstance(rec, Reject):
            rejects.append(rec)
            continue
        lang = rec.fields.get(config.lang_field)
        key = "(none)" if lang is None else str(lang).strip().lower()
        counts[key] = counts.get(key, 0) + 1
        example = {"messages": rec.messages, config.text_field: rec.text, config.lang_field: lang}
        rows.append(tokenize_example(example, lm.tokenizer, lang_index=lang_index, lang_field=config.lang_field,
                                     text_field=config.text_field, positions=config.positions,
                                     assistant_only_loss=config.assistant_only_loss, max_length=config.max_length,
                                     chat_template=template))
    if not rows:
        raise UsageError(f"data {data_spec}: no usable record ({len(rejects)} rejected)")
    args = SFTConfig(
        output_dir=str(out_dir), max_steps=config.max_steps, num_train_epochs=config.epochs,
        learning_rate=config.learning_rate, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, max_length=config.max_length, seed=config.seed,
        data_seed=config.seed, logging_steps=config.logging_steps, save_strategy="no", report_to=[],
        bf16=config.bf16, gradient_checkpointing=config.gradient_checkpointing, disable_tqdm=progress,
    )
    trainer = SASFTTrainer(lm.model, args, sasft_loss=loss, sasft_lambda=config.sasft_lambda,
                           sasft_positions=config.positions, sasft_lang_field=config.lang_field,
                           train_dataset=Dataset.from_list(rows), processing_class=lm.tokenizer,
                           callbacks=[RichProgress()] if progress else None)
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for cb in (PrinterCallback, ProgressCallback):  # stdout carries only the CLI's JSON; the log is in sasft_train.json
        trainer.remove_callback(cb)
    result = trainer.train()
    if config.save_model:
        trainer.save_model(str(out_dir))
        lm.tokenizer.save_pretrained(str(out_dir))
    unscored = sorted(k for k in counts if k not in lang_index)
    summary = {
        "out": str(out_dir), "model": lm.model_id, "steps": int(result.global_step),
        "train_loss": float(result.training_loss), "config": config.model_dump(mode="json"),
        "plan": {"dir": str(config.plan), "layer": loss.layer, "languages": loss.languages,
                 "baseline_languages": loss.baseline_languages, "features": loss.n_features},
        "data": {"files": [str(p) for p in paths], "fingerprint": input_fingerprint(paths), "examples": len(rows),
                 "per_language": counts, "languages_without_baseline": unscored, "rejects": len(rejects)},
        "log": trainer.state.log_history,
    }
    write_json(out_dir / "sasft_train.json", summary)
    if rejects:
        import json

        write_text(out_dir / "rejects.jsonl", "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rejects))
    return summary
