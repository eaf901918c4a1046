"""qlora_merge: a merge into 4 bits requantizes W4 + dW; a small dW is mostly rounded away, a large one kept."""

import bitsandbytes as bnb
import pytest
import torch

from qlora_lessons.nf4 import dequantize_4bit, quantize_4bit
from qlora_lessons.qlora_merge import MergeRetention, merge_4bit, merge_retention, plot_merge_retention


def four_bit_weight(seed: int = 0, shape=(256, 512), double_quant: bool = True) -> torch.Tensor:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02
    return dequantize_4bit(*quantize_4bit(w, double_quant=double_quant))


def low_rank_delta(w4: torch.Tensor, relative_size: float, r: int = 2, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    delta = torch.randn(w4.shape[0], r, generator=generator) @ torch.randn(r, w4.shape[1], generator=generator)
    return delta * (relative_size * w4.norm() / delta.norm())


def test_a_zero_update_gives_the_4bit_weight_back():
    w4 = four_bit_weight(double_quant=False)
    assert torch.equal(merge_4bit(w4, torch.zeros_like(w4), double_quant=False), w4)


@pytest.mark.parametrize("relative_size, low, high", [(0.001, -0.1, 0.2), (0.3, 0.9, 1.1)])
def test_a_small_update_is_rounded_away_and_a_large_one_kept(relative_size, low, high):
    w4 = four_bit_weight()
    result = merge_retention([w4], [low_rank_delta(w4, relative_size)])
    assert low < result.kept < high, result
    assert result.relative_size == pytest.approx(relative_size, rel=1e-4)


def test_retention_grows_with_the_size_of_the_update():
    w4 = four_bit_weight()
    kept = [merge_retention([w4], [low_rank_delta(w4, s)]).kept for s in (0.003, 0.03, 0.3)]
    assert kept[0] < kept[1] < kept[2], kept


def test_layers_add_up_and_a_given_merge_is_measured_as_given():
    w4a, w4b = four_bit_weight(0), four_bit_weight(1, (128, 256))
    da, db = low_rank_delta(w4a, 0.05), low_rank_delta(w4b, 0.05, seed=2)
    both = merge_retention([w4a, w4b], [da, db])
    exact = merge_retention([w4a, w4b], [da, db], merged=[w4a + da, w4b + db])  # a merge that keeps all of dW
    assert exact.kept == pytest.approx(1.0) and exact.error == pytest.approx(0.0, abs=1e-6)
    assert min(merge_retention([w], [d]).kept for w, d in ((w4a, da), (w4b, db))) <= both.kept
    assert isinstance(both, MergeRetention) and "kept" in repr(both)


def test_the_course_quantizer_agrees_with_bitsandbytes_requantization():
    w4 = four_bit_weight()
    delta = low_rank_delta(w4, 0.05)
    packed, state = bnb.functional.quantize_4bit(w4 + delta, blocksize=64, quant_type="nf4", compress_statistics=True)
    theirs = bnb.functional.dequantize_4bit(packed, state).float()
    assert merge_retention([w4], [delta], merged=[theirs]).kept == pytest.approx(
        merge_retention([w4], [delta]).kept, abs=0.01)


def test_bad_arguments_are_named():
    w4 = four_bit_weight()
    with pytest.raises(ValueError, match="delta"):
        merge_4bit(w4, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="quant_type"):
        merge_4bit(w4, torch.zeros_like(w4), quant_type="int8")
    with pytest.raises(ValueError, match="weights and deltas"):
        merge_retention([], [])
    with pytest.raises(ValueError, match="all zero"):
        merge_retention([w4], [torch.zeros_like(w4)])
    with pytest.raises(ValueError, match="merged"):
        merge_retention([w4], [w4], merged=[w4, w4])
    with pytest.raises(TypeError, match="results"):
        plot_merge_retention({})


def test_the_plot_has_one_point_per_result():
    w4 = four_bit_weight()
    results = {k: merge_retention([w4], [low_rank_delta(w4, 0.01 * k)]) for k in (1, 4)}
    fig = plot_merge_retention(results)
    assert len(fig.axes[0].lines[0].get_xdata()) == 2


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny random Llama saved with the course tokenizer, to load in 4 bits through bitsandbytes."""
    import shutil

    from qlora_lessons.models import COURSE_MODEL_DIR

    from tiny_models import tiny_llama

    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama(vocab_size=128).save_pretrained(folder)
    for file in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(COURSE_MODEL_DIR / file, folder)
    return folder


def load_4bit_with_adapter(folder, compute_dtype):
    from qlora_lessons.lora import add_lora, lora_layers
    from qlora_lessons.models import load_model

    model, _ = load_model(folder, quantization="nf4", compute_dtype=compute_dtype, device="cpu")
    add_lora(model, "all-linear", r=4, lora_alpha=8)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():  # as after training: B away from zero
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)
    return model


IDS = torch.tensor([[5, 17, 42, 99, 7, 23, 64, 3, 11, 80], [8, 120, 33, 2, 71, 54, 19, 90, 6, 44]])


def test_a_4bit_model_counts_its_weights_not_its_packed_bytes(tiny_folder):
    from qlora_lessons.lora import count_trainable

    from tiny_models import tiny_llama

    model = load_4bit_with_adapter(tiny_folder, torch.float32)
    full = count_trainable(tiny_llama(vocab_size=128)).total
    packed = sum(p.numel() for p in model.parameters())  # Params4bit: two weights per uint8 element
    count = count_trainable(model)
    assert count.total == full + count.trainable, "4-bit weights count as weights: the model's own count + adapters"
    assert packed < count.total and count.fraction == count.trainable / count.total


def test_dequantize_model_gives_16bit_layers_that_merge(tiny_folder):
    import bitsandbytes.functional as bnb_functional

    from qlora_lessons.lora import lora_layers, merge_and_unload, merge_lora
    from qlora_lessons.qlora_merge import dequantize_model

    model = load_4bit_with_adapter(tiny_folder, torch.float32)
    layer = next(iter(lora_layers(model).values()))
    nf4 = bnb_functional.dequantize_4bit(layer.base_layer.weight.data, layer.base_layer.weight.quant_state)
    with torch.no_grad():
        logits = model(IDS).logits
    with pytest.raises(TypeError, match="dequantize the base first"):
        merge_lora(model)
    dequantize_model(model, torch.float32)
    assert not hasattr(model.config, "quantization_config") and not model.is_quantized
    assert type(layer.base_layer) is torch.nn.Linear and torch.equal(layer.base_layer.weight, nf4)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, logits, rtol=1e-5, atol=1e-5)
        merge_lora(model)
        torch.testing.assert_close(model(IDS).logits, logits, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(merge_and_unload(model)(IDS).logits, logits, rtol=1e-4, atol=1e-4)


def test_dequantize_model_turns_qlora_layers_into_lora_layers():
    from qlora_lessons.lora import LoRALinear, lora_layers, merge_and_unload
    from qlora_lessons.qlora import QLoRALinear, prepare_qlora
    from qlora_lessons.qlora_merge import dequantize_model

    from tiny_models import tiny_llama

    original = tiny_llama()
    model = prepare_qlora(tiny_llama(), r=2, lora_alpha=4, compute_dtype=torch.float32)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, QLoRALinear):
                module.lora_B.copy_(torch.randn(module.lora_B.shape, generator=generator) * 0.1)
        logits = model(IDS % 100).logits
    dequantize_model(model, torch.float32)
    layers = lora_layers(model)
    assert len(layers) == 14 and all(isinstance(layer, LoRALinear) for layer in layers.values())
    q = layers["model.layers.0.self_attn.q_proj"].base_layer.weight
    w = original.model.layers[0].self_attn.q_proj.weight
    error = float((q - w).norm() / w.norm())
    assert 0.01 < error < 0.2, f"the merged base is the NF4 weight, not the original: relative error {error:.3f}"
    with torch.no_grad():
        torch.testing.assert_close(model(IDS % 100).logits, logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(merge_and_unload(model)(IDS % 100).logits, logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("compute_dtype", [torch.bfloat16, torch.float32])
def test_peft_round_trip_on_a_4bit_model_is_exact(tiny_folder, tmp_path, compute_dtype):
    """peft's lora.bnb.Linear4bit rounds the update to the output's dtype before adding it; LoRALinear on a 4-bit
    base does the same (before it added in float32 and rounded once: 0.8% apart in bfloat16 on this model)."""
    import peft

    from qlora_lessons.lora_peft import save_as_peft
    from qlora_lessons.models import load_model

    model = load_4bit_with_adapter(tiny_folder, compute_dtype)
    save_as_peft(model, tmp_path / "adapter")
    base, _ = load_model(tiny_folder, quantization="nf4", compute_dtype=compute_dtype, device="cpu")
    reloaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, reloaded(IDS).logits)


def test_dequantize_model_rejects_bad_arguments():
    from qlora_lessons.qlora_merge import dequantize_model

    from tiny_models import tiny_llama

    with pytest.raises(ValueError, match="has no 4-bit layer"):
        dequantize_model(tiny_llama())
    with pytest.raises(TypeError, match="dtype must be a floating torch.dtype"):
        dequantize_model(tiny_llama(), torch.int8)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        dequantize_model("model")
