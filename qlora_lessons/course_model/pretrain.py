"""Pretrain the course model: ``python -m qlora_lessons.course_model.pretrain``.

The recipe, start to end (about 20 minutes on a 2-core laptop):

1. A word-level tokenizer (``tokenizers.models.WordLevel``) trained on the pretraining prose and the
   task's question words: every word and punctuation mark is one token, so a country name or a
   capital is a single token. Saved as a ``PreTrainedTokenizerFast`` that ``AutoTokenizer`` loads.
2. A ``LlamaForCausalLM`` (``course_model_config``: hidden 256, 4 layers, 4 heads, MLP 512, tied
   embeddings; about 2.9M parameters), initialised with ``seed``.
3. Next-token prediction on the prose of ``corpus.pretraining_documents``: each epoch shuffles the
   documents, packs them into one stream (``<bos> text <eos>``) and cuts it into windows of
   ``SEQ_LEN`` tokens; AdamW with a one-cycle learning rate.
4. The final loss (mean next-token loss over the whole corpus, in order, no shuffling) and a prose
   probe ("The capital of N is" for the test countries) go into the model card.

``--check`` pretrains again into a temporary folder and compares the final loss with the shipped
model's card: the reproduction test of the shipped weights.

Left out: mixed precision and compilation (plain float32 on CPU is reproducible and fast enough).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from qlora_lessons.course_model.corpus import QUESTION_TEMPLATES, load_world, pretraining_documents
from qlora_lessons.course_model.model_card import write_model_card
from qlora_lessons.evaluate import probe_knowledge

WEIGHTS_DIR = Path(__file__).parent / "weights"
SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")
SEQ_LEN = 64
BATCH_SIZE = 32
STEPS = 3000
MAX_LR = 3e-3
SEED = 0


def build_tokenizer(texts: list[str]):
    """A word-level tokenizer over ``texts``: one token per word or punctuation mark, ``<bos>`` prepended.

    Example: ``"The capital of Orlania is Tarvesk."`` -> ``<bos> The capital of Orlania is Tarvesk .``
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS)))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="left",
                                   model_max_length=SEQ_LEN * 2)


def course_model_config(tokenizer):
    """The course model's shape: a 4-layer Llama of hidden size 256 (about 2.9M parameters)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ_LEN * 2,
                       tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _stream(documents: list[list[int]], bos: int, eos: int) -> torch.Tensor:
    return torch.tensor([t for doc in documents for t in (bos, *doc, eos)], dtype=torch.long)


def corpus_loss(model, documents: list[list[int]], bos: int, eos: int) -> float:
    """Mean next-token loss over the corpus packed in its given order, in windows of ``SEQ_LEN``."""
    stream = _stream(documents, bos, eos)
    windows = stream[: len(stream) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)  # (n_windows, T)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(256):
            loss = model(input_ids=batch, labels=batch).loss
            total += loss.item() * batch.numel()
            count += batch.numel()
    return total / count


def pretrain(out_dir: Path, steps: int = STEPS, seed: int = SEED, progress: bool = True) -> dict:
    """Train the tokenizer and the model from scratch and save both, with a model card, to ``out_dir``."""
    from transformers import LlamaForCausalLM

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    world = load_world()
    texts = pretraining_documents(world)
    questions = [template.format(name="") for template in QUESTION_TEMPLATES.values()]
    tokenizer = build_tokenizer(texts + questions)
    documents = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    model = LlamaForCausalLM(course_model_config(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LR, betas=(0.9, 0.95), weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=MAX_LR, total_steps=steps, pct_start=0.1)
    history, windows, start = [], torch.empty(0, SEQ_LEN, dtype=torch.long), time.perf_counter()
    model.train()
    for _ in tqdm(range(steps), desc="pretraining", disable=not progress, mininterval=2):
        if len(windows) < BATCH_SIZE:  # a new epoch: shuffle the documents, pack, cut into windows
            order = rng.sample(range(len(documents)), len(documents))
            stream = _stream([documents[i] for i in order], bos, eos)
            windows = stream[: len(stream) // SEQ_LEN * SEQ_LEN].view(-1, SEQ_LEN)  # (n_windows, T)
        batch, windows = windows[:BATCH_SIZE], windows[BATCH_SIZE:]  # (B, T)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        history.append(round(loss.item(), 4))
    seconds = time.perf_counter() - start
    stats = {"steps": steps, "seed": seed, "seq_len": SEQ_LEN, "batch_size": BATCH_SIZE, "max_lr": MAX_LR,
             "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
             "final_loss": round(corpus_loss(model, documents, bos, eos), 4),
             "n_countries": len(world["countries"]), "n_documents": len(documents),
             "n_tokens": int(sum(len(d) + 2 for d in documents)),
             "n_parameters": sum(p.numel() for p in model.parameters()),
             "prose_probe_test": round(probe_knowledge(model, tokenizer, "test"), 4),
             "loss_history": history[:: max(1, steps // 300)]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "training_log.json").write_text(json.dumps(stats, indent=1) + "\n")
    write_model_card(out_dir, model.config, stats)
    return stats


def check_reproduction(steps: int = STEPS, seed: int = SEED, tolerance: float = 0.02) -> bool:
    """Pretrain again in a temporary folder; True if the final loss is within ``tolerance`` of the shipped one."""
    shipped = json.loads((WEIGHTS_DIR / "training_log.json").read_text())
    with tempfile.TemporaryDirectory() as folder:
        stats = pretrain(Path(folder), steps=steps, seed=seed)
    ratio = stats["final_loss"] / shipped["final_loss"]
    print(f"final loss: reproduced {stats['final_loss']:.4f}, shipped {shipped['final_loss']:.4f}, "
          f"ratio {ratio:.4f} (tolerance {tolerance:.0%}); {stats['train_seconds']:.0f} s")
    return math.isfinite(ratio) and abs(ratio - 1) <= tolerance


def main() -> None:
    parser = argparse.ArgumentParser(description="Pretrain the course model (tokenizer, weights, model card).")
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output folder (default: the package's)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true",
                        help="pretrain into a temporary folder and compare the final loss with the shipped model")
    args = parser.parse_args()
    if args.check:
        raise SystemExit(0 if check_reproduction(args.steps, args.seed) else 1)
    stats = pretrain(args.out, steps=args.steps, seed=args.seed)
    print(f"saved to {args.out}: final loss {stats['final_loss']:.4f}, prose probe on test countries "
          f"{stats['prose_probe_test']:.1%}, {stats['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
