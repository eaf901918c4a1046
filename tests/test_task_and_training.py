"""The task (qlora_lessons.data), scoring (evaluate) and the fine-tuning loop (train), on the course model."""

import pytest
import torch

from qlora_lessons.data import Example, describe_task, load_task
from qlora_lessons.evaluate import (
    answer_explorer,
    exact_match,
    exact_match_by,
    generate_answers,
    normalize_answer,
    plot_exact_match,
)
from qlora_lessons.models import load_model
from qlora_lessons.train import TrainResult, collate, encode_examples, finetune, learning_rate_at, plot_loss_curves


@pytest.fixture(scope="module")
def course():
    return load_model(device="cpu")


def test_task_splits_by_country():
    train, test = load_task("train"), load_task("test")
    assert (len(train), len(test)) == (840, 360)
    assert not {e.country for e in train} & {e.country for e in test}
    assert describe_task()["test countries"] == 90
    assert train[0].prompt.startswith("Q: ") and train[0].prompt.endswith(" A:")
    with pytest.raises(ValueError, match="split"):
        load_task("validation")


@pytest.mark.parametrize("text, answer", [(" Tarvesk . Q :", "Tarvesk"), ("Tarvesk", "Tarvesk"),
                                          ("  two  words.", "two words"), ("line\nnext", "line"), ("", "")])
def test_normalize_answer(text, answer):
    assert normalize_answer(text) == answer


class _ScriptedModel(torch.nn.Module):
    """Answers every prompt with a fixed continuation, to test scoring without a trained model."""

    def __init__(self, tokenizer, continuation):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        new = torch.tensor(self.ids[:max_new_tokens]).expand(len(input_ids), -1)
        return torch.cat([input_ids, new], dim=1)


def test_exact_match_counts_only_exact_answers(course):
    _, tokenizer = course
    examples = [Example("Q: What is the capital of X? A:", answer, "X", "capital") for answer in ("Pellic", "Caldic")]
    assert exact_match(_ScriptedModel(tokenizer, "Pellic . Q"), tokenizer, examples) == 0.5
    assert exact_match(_ScriptedModel(tokenizer, "Pellic Caldic ."), tokenizer, examples) == 0.0
    with pytest.raises(ValueError, match="empty"):
        exact_match(_ScriptedModel(tokenizer, "."), tokenizer, [])


def test_raw_continuations_keep_everything_written(course):
    _, tokenizer = course
    scripted = _ScriptedModel(tokenizer, "Pellic . Q")
    assert generate_answers(scripted, tokenizer, ["Q: a? A:"], normalize=False) == ["Pellic . Q"]
    assert generate_answers(scripted, tokenizer, ["Q: a? A:"]) == ["Pellic"]


def test_batched_generation_equals_one_at_a_time(course):
    model, tokenizer = course
    prompts = ["The capital of", "People in", "The currency of Mearnistan is the", "Mearnistan is a country in"]
    assert generate_answers(model, tokenizer, prompts, batch_size=4) == [
        generate_answers(model, tokenizer, [p], batch_size=1)[0] for p in prompts]


def test_labels_cover_only_the_answer(course):
    _, tokenizer = course
    example = load_task("train")[0]
    ids, labels = encode_examples(tokenizer, [example])[0]
    answer_tokens = [t for t, label in zip(ids, labels) if label != -100]
    assert tokenizer.convert_ids_to_tokens(answer_tokens) == [example.answer, ".", tokenizer.eos_token]
    batch = collate(encode_examples(tokenizer, load_task("train")[:3]), tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == -100)).all()


def test_learning_rate_schedule():
    assert learning_rate_at(0, 100, 1.0, 10, "cosine") == pytest.approx(0.1)
    assert learning_rate_at(9, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert learning_rate_at(10, 100, 1.0, 10, "cosine") == pytest.approx(1.0)
    assert learning_rate_at(55, 100, 1.0, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate_at(99, 100, 1.0, 10, "constant") == 1.0


def test_finetune_is_seeded_learns_and_trains_only_what_requires_grad():
    examples = load_task("train")[:16]
    runs = []
    for _ in range(2):
        model, tokenizer = load_model(device="cpu")
        model.model.embed_tokens.weight.requires_grad_(False)
        frozen = model.model.embed_tokens.weight.clone()
        result = finetune(model, tokenizer, examples, steps=25, lr=3e-3, batch_size=8, warmup=2, progress=False)
        assert torch.equal(model.model.embed_tokens.weight, frozen)
        runs.append(result)
    assert runs[0].losses == runs[1].losses
    assert runs[0].final_loss < 0.5 * runs[0].losses[0]
    assert runs[0].trainable_parameters == sum(p.numel() for p in model.parameters()) - frozen.numel()
    assert "final loss" in repr(runs[0])


def test_finetune_rejects_bad_arguments(course):
    model, tokenizer = course
    examples = load_task("train")[:4]
    for kwargs, name in [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"schedule": "linear"}, "schedule")]:
        with pytest.raises(ValueError, match=name):
            finetune(model, tokenizer, examples, progress=False, **kwargs)
    with pytest.raises(ValueError, match="empty"):
        finetune(model, tokenizer, [], progress=False)


def test_exact_match_by_attribute_groups_and_averages(course):
    _, tokenizer = course
    examples = [Example("Q: a? A:", "Pellic", "X", "language"), Example("Q: b? A:", "Caldic", "Y", "language"),
                Example("Q: c? A:", "Pellic", "X", "capital")]
    scores = exact_match_by(_ScriptedModel(tokenizer, "Pellic ."), tokenizer, examples)
    assert scores == {"language": 0.5, "capital": 1.0}
    by_country = exact_match_by(_ScriptedModel(tokenizer, "Pellic ."), tokenizer, examples, key="country")
    assert by_country == {"X": 1.0, "Y": 0.0}


def test_plot_and_explorer_show_every_model(course):
    import ipywidgets

    model, tokenizer = course
    figure = plot_exact_match({"a": {"capital": 0.5, "language": 1.0}, "b": {"capital": 0.0, "language": 0.2}},
                              reference={"capital": 0.0, "language": 0.1})
    assert len(figure.axes[0].patches) == 4
    examples = load_task("test")[:3]
    explorer = answer_explorer({"course model": model}, tokenizer, examples)
    picker, shown = explorer.children
    assert isinstance(picker, ipywidgets.Dropdown) and "course model" in shown.value
    picker.value = 2
    assert examples[2].answer in shown.value
    with pytest.raises(ValueError):
        answer_explorer({}, tokenizer, examples)


def test_loss_curves_smoothed_with_final_loss_and_difference():
    result = TrainResult(losses=tuple(float(x) for x in torch.linspace(3, 0.1, 30)), seconds=1.0, steps=30,
                         examples_seen=960, trainable_parameters=10)
    figure = plot_loss_curves({"QLoRA": result}, window=10)
    ax = figure.axes[0]
    assert "final 0.200" in ax.get_legend().get_texts()[0].get_text()
    raw, smoothed = ax.get_lines()
    assert smoothed.get_ydata()[9] == pytest.approx(sum(result.losses[:10]) / 10)
    assert smoothed.get_ydata()[0] == pytest.approx(result.losses[0])
    left, right = plot_loss_curves({"AdamW": [3.0, 2.0, 1.0], "AdamW8bit": [3.0, 2.5, 1.5]}, difference=True).axes
    assert len(left.get_lines()) == 2
    assert list(right.get_lines()[0].get_ydata()) == [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="window"):
        plot_loss_curves({"QLoRA": result}, window=0)
    with pytest.raises(ValueError, match="curves must map"):
        plot_loss_curves({})
    with pytest.raises(ValueError, match="no losses"):
        plot_loss_curves({"empty": []})


def test_held_out_loss_is_recorded_without_changing_the_run_and_drawn_dashed():
    from qlora_lessons.train import answer_loss

    examples, held_out = load_task("train")[:16], load_task("test")[:8]
    runs = []
    for eval_examples in (None, held_out):
        model, tokenizer = load_model(device="cpu")
        before = answer_loss(model, tokenizer, held_out, batch_size=3)  # batches of unequal size: token-weighted
        runs.append(finetune(model, tokenizer, examples, steps=6, lr=3e-3, batch_size=8, warmup=1, progress=False,
                             eval_examples=eval_examples, eval_every=4))
    assert runs[0].losses == runs[1].losses and runs[0].eval_losses == ()  # evaluation draws no random numbers
    assert [step for step, _ in runs[1].eval_losses] == [0, 4, 6]
    assert runs[1].eval_losses[0][1] == pytest.approx(before, rel=1e-5)
    assert runs[1].eval_losses[-1][1] == pytest.approx(answer_loss(model, tokenizer, held_out), rel=1e-5)
    batch = collate(encode_examples(tokenizer, held_out), tokenizer.pad_token_id)
    assert answer_loss(model, tokenizer, held_out) == pytest.approx(model(**batch).loss.item(), rel=1e-5)
    lines = plot_loss_curves({"run": runs[1]}).axes[0].get_lines()
    assert [line.get_linestyle() for line in lines] == ["-", "--"] and lines[0].get_color() == lines[1].get_color()
    with pytest.raises(ValueError, match="eval_every"):
        finetune(model, tokenizer, examples, steps=1, progress=False, eval_examples=held_out, eval_every=0)
    with pytest.raises(ValueError, match="empty"):
        answer_loss(model, tokenizer, [])


def test_with_shots_puts_solved_questions_before_each_prompt():
    from qlora_lessons.data import with_shots

    train, test = load_task("train"), load_task("test")
    prompted = with_shots(test[:2], train[:2])
    context = f"{train[0].prompt} {train[0].answer}. {train[1].prompt} {train[1].answer}. "
    assert prompted == [{"prompt": context + e.prompt, "answer": e.answer} for e in test[:2]]
    assert with_shots(test[:1], []) == [{"prompt": test[0].prompt, "answer": test[0].answer}]
    with pytest.raises(TypeError, match="Example"):
        with_shots([{"prompt": "Q: a? A:", "answer": "b"}], train[:1])
