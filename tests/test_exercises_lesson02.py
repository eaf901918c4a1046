"""Lesson 02's self-checks pass their own solutions and fail wrong answers."""

from qlora_lessons.exercises import lesson02


def test_each_check_passes_its_solution():
    assert lesson02.check_full_finetune_bytes(lesson02.solution_full_finetune_bytes())
    assert lesson02.check_lora_parameters(lesson02.solution_lora_parameters)
    assert lesson02.check_double_quant_bits(lesson02.solution_double_quant_bits())
    assert lesson02.check_largest_batch(lesson02.solution_largest_batch())
    assert lesson02.check_33b_batch(lesson02.solution_33b_batch())
    assert lesson02.check_bfloat16_step(lesson02.solution_bfloat16_step())


def test_each_check_fails_a_wrong_answer(capsys):
    assert not lesson02.check_full_finetune_bytes(4 * 7_000_000_000)  # weights only
    assert not lesson02.check_lora_parameters(lambda config, r, targets: config.num_hidden_layers * r * 2)
    assert not lesson02.check_lora_parameters(lambda config, r, targets: 1 / 0)  # a crash is reported, not raised
    assert not lesson02.check_lora_parameters(12)
    assert not lesson02.check_double_quant_bits(4.5)  # without double quantization
    assert not lesson02.check_double_quant_bits(4.127)  # typed from the lesson's rounded print, not computed
    assert not lesson02.check_largest_batch(lesson02.solution_largest_batch() + 1)
    assert not lesson02.check_33b_batch(lesson02.solution_33b_batch() + 1)
    assert not lesson02.check_33b_batch(1)  # one sequence fits, but more do
    assert not lesson02.check_bfloat16_step(1e-3)  # a float32 step, not bfloat16's
    assert not lesson02.check_bfloat16_step(2.0 ** -8)  # ties to even: 1 + 2**-8 rounds back to 1
    assert capsys.readouterr().out.count("✗") == 11


def test_the_answers_are_what_the_lesson_says():
    assert lesson02.solution_bfloat16_step() == 2.0 ** -7
    assert 1 < lesson02.solution_33b_batch() < 4  # 33B on 24 GiB: borderline, a few sequences of 1024 tokens


def test_a_learner_who_forgets_grouped_query_attention_is_told():
    def all_heads(config, r, targets):
        h, i = config.hidden_size, config.intermediate_size
        shapes = {"q_proj": (h, h), "k_proj": (h, h), "v_proj": (h, h), "o_proj": (h, h),
                  "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
        return config.num_hidden_layers * sum(r * sum(shapes[name]) for name in targets)

    assert not lesson02.check_lora_parameters(all_heads)  # right for llama-7b, wrong for llama-2-70b
