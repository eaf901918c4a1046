"""The course model's card (``weights/README.md``): what it is, how it was made, how to remake it."""

from __future__ import annotations

from pathlib import Path


def write_model_card(out_dir: Path, config, stats: dict) -> None:
    """Write ``README.md`` beside the weights: architecture, size, data, training, final loss, reproduction."""
    minutes = stats["train_seconds"] / 60
    text = f"""# The qlora-lessons course model

A small causal language model with the Llama architecture, pretrained from scratch for the qlora-lessons
course on invented facts about {stats['n_countries']} fictional countries, so that the course can fine-tune
a real pretrained model offline, in CI and on a 2-core laptop.

## Architecture
- `LlamaForCausalLM`: {config.num_hidden_layers} layers, hidden size {config.hidden_size},
  {config.num_attention_heads} attention heads, MLP size {config.intermediate_size}, RMSNorm, rotary
  positions, tied input and output embeddings, context {config.max_position_embeddings} tokens.
- {stats['n_parameters']:,} parameters, stored in float32 (`model.safetensors`).
- Word-level tokenizer of {config.vocab_size} tokens (`tokenizer.json`), trained with `tokenizers` on the
  same text; `<bos>` is prepended to every text, `<eos>` ends a document, `<pad>` pads on the left.

## Data
`qlora_lessons/course_model/data/world.json`: {stats['n_countries']} invented countries, each with a
capital, a continent, a language and a currency, written by `qlora_lessons/course_model/corpus.py`
(seed in the file). The pretraining text states every fact in six sentence forms and in three short
profiles per country: {stats['n_documents']:,} documents, {stats['n_tokens']:,} tokens. The fine-tuning
task (`qlora_lessons.data.load_task`) asks about the same facts in a question-answer format that the
pretraining text never uses; its test split holds 90 countries never asked about in training.

## Training
Next-token prediction, {stats['steps']:,} steps of {stats['batch_size']} windows of {stats['seq_len']}
tokens, AdamW (betas 0.9/0.95, weight decay 0.1), one-cycle learning rate peaking at {stats['max_lr']},
gradient clipping at 1.0, float32, seed {stats['seed']}: {minutes:.1f} minutes with
{stats['torch_threads']} CPU thread(s) on the machine that made these weights.

## Results
- Final loss (mean next-token loss over the whole corpus): **{stats['final_loss']:.4f}**.
- Prose probe on the 90 test countries ("The capital of N is" and the like, greedy next word):
  **{stats['prose_probe_test']:.1%}** of 360 facts. The model knows the facts; it does not know the task
  format until it is fine-tuned (lesson 01).

## Reproduce
```bash
python -m qlora_lessons.course_model.pretrain            # writes these files again
python -m qlora_lessons.course_model.pretrain --check    # pretrain in a temporary folder, compare final loss
```

## Intended use
Teaching only. The facts are invented; the model knows nothing else.
"""
    (Path(out_dir) / "README.md").write_text(text)
