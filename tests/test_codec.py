import numpy as np
import pytest

from sadt.codec import END, SEP, Codec, CodecConfig, fit_scaler


def test_each_digit_and_separator_is_one_token_of_the_shipped_tokenizer(base_tokenizer):
    codec = Codec(base_tokenizer)
    # Golden ids of SmolLM2's tokenizer: '0'..'9' are 32..41, ',' is 28, EOS '<|im_end|>' is 2.
    assert codec.action_token_ids == list(range(32, 42)) + [28, 2]
    assert base_tokenizer.encode("1034,512,", add_special_tokens=False) == [33, 32, 35, 36, 28, 37, 33, 34, 28]


def test_scaler_is_llmtime_formula():
    history = np.array([3.0, 7.0, 5.0, 11.0, 9.0])
    scaler = fit_scaler(history, alpha=0.95, beta=0.3)
    shift = 3.0 - 0.3 * 8.0
    assert scaler.shift == pytest.approx(shift)
    assert scaler.scale == pytest.approx(np.quantile(history - shift, 0.95))
    np.testing.assert_allclose(scaler.inverse(scaler.transform(history)), history)


def test_text_round_trip_keeps_precision(base_tokenizer):
    codec = Codec(base_tokenizer, CodecConfig(precision=3))
    values = np.array([0.0, 0.0514, 1.2345, 0.9])
    text = codec.values_to_text(values)
    assert text == "0,51,1234,900,"  # rint: 1234.5 -> 1234 (banker's rounding on an exact .5)
    np.testing.assert_allclose(codec.text_to_values(text), [0.0, 0.051, 1.234, 0.9])


def test_prompt_decodes_to_the_serialised_context(base_tokenizer):
    codec = Codec(base_tokenizer)
    context = np.array([112.0, 118, 132, 129, 121, 135, 148])
    ids, scaler = codec.encode_prompt(context)
    text = base_tokenizer.decode(ids)
    assert text.endswith(",") and " " not in text
    np.testing.assert_allclose(scaler.inverse(codec.text_to_values(text)), context, atol=scaler.scale * 1e-3)


def test_decode_actions_marks_short_rows_invalid(base_tokenizer):
    codec = Codec(base_tokenizer)
    full = [1, 2, SEP, 3, SEP, END]  # "12,3," -> 0.012, 0.003
    short = [4, SEP, 5, -1, -1, -1]  # "4,5" -> one complete value
    values, valid = codec.decode_actions(np.array([full, short]), horizon=2)
    assert valid.tolist() == [True, False]
    np.testing.assert_allclose(values[0], [0.012, 0.003])
    assert values[1, 0] == pytest.approx(0.004) and np.isnan(values[1, 1])


def test_codec_rejects_bad_values_and_settings(base_tokenizer):
    codec = Codec(base_tokenizer)
    with pytest.raises(ValueError, match="non-negative"):
        codec.values_to_text(np.array([0.5, -0.1]))
    with pytest.raises(ValueError, match="precision"):
        CodecConfig(precision=-1)
    with pytest.raises(ValueError, match="separator"):
        CodecConfig(separator="7")
