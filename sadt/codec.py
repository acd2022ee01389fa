"""LLMTime-style codec: a real-valued series <-> a digit string an LM can read and write.

Gruver et al., "Large Language Models Are Zero-Shot Time Series Forecasters" (NeurIPS 2023), §3:
shift by `min - beta * range`, divide by the alpha-quantile of the shifted history, keep
`precision` decimals, drop the decimal point, write values without spaces joined by `,`, and end
the prompt with a trailing separator so the next token starts a value.

During search the LM may only emit the codec's *actions*: the ten digits, the separator and end.
`ACTION_CHARS` fixes their order, so an action index `a` means the same thing everywhere
(trees, buffers, flow heads): 0-9 are digits, `SEP` is the separator and `END` is end-of-text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sadt.config import check_finite

DIGITS = "0123456789"
SEP = 10  # action index of the value separator
END = 11  # action index of end-of-text
N_ACTIONS = 12


@dataclass(frozen=True)
class CodecConfig:
    precision: int = 3  # decimals kept after scaling (LLMTime: 3)
    alpha: float = 0.95  # quantile of the shifted history that maps to 1.0
    beta: float = 0.3  # shift below the minimum, as a fraction of the range
    separator: str = ","
    max_digits: int = 4  # most digits a generated value may have (values < 10**(max_digits - precision))

    def __post_init__(self) -> None:
        check_finite(self, "codec")
        if not 0 <= self.precision <= 6:
            raise ValueError(f"codec `precision` must be in [0, 6] decimals, got {self.precision}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"codec `alpha` must be in (0, 1] (a quantile), got {self.alpha}")
        if self.beta < 0.0:
            raise ValueError(f"codec `beta` must be >= 0 (shift below the minimum), got {self.beta}")
        if len(self.separator) != 1 or self.separator in DIGITS:
            raise ValueError(f"codec `separator` must be one non-digit character, got {self.separator!r}")
        if not 1 <= self.max_digits <= 9:
            raise ValueError(f"codec `max_digits` must be in [1, 9], got {self.max_digits}")
        if self.max_digits < self.precision + 1:  # the α-quantile maps to 1.0, written with precision + 1 digits
            raise ValueError(f"codec `max_digits` = {self.max_digits} caps every value below 1.0 (the context's "
                             f"{self.alpha:g} quantile) at precision {self.precision}: it must be >= precision + 1 = "
                             f"{self.precision + 1}")


@dataclass(frozen=True)
class Scaler:
    """Affine map `y = (x - shift) / scale` fitted on the history only (no look-ahead)."""

    shift: float
    scale: float

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.shift) / self.scale

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y, dtype=np.float64) * self.scale + self.shift


def fit_scaler(history: np.ndarray, alpha: float = 0.95, beta: float = 0.3) -> Scaler:
    """LLMTime's scaler: `shift = min - beta (max - min)`, `scale = quantile_alpha(history - shift)`."""
    history = np.asarray(history, dtype=np.float64)
    if history.size == 0 or not np.all(np.isfinite(history)):
        raise ValueError("fit_scaler needs a non-empty, finite history")
    shift = history.min() - beta * (history.max() - history.min())
    scale = float(np.quantile(history - shift, alpha))
    return Scaler(shift=float(shift), scale=scale if scale > 0 else 1.0)


class Codec:
    """Encodes scaled values to text and maps the LM's vocabulary onto the codec's actions.

    Args:
        tokenizer: a Hugging Face tokenizer in which every digit and the separator are one token.
        config: precision, scaling and grammar settings.

    Raises:
        ValueError: if a digit or the separator is not a single token of `tokenizer`.
    """

    def __init__(self, tokenizer, config: CodecConfig | None = None) -> None:
        self.config = config or CodecConfig()
        self.tokenizer = tokenizer
        chars = list(DIGITS) + [self.config.separator]
        ids = []
        for ch in chars:
            pieces = tokenizer.encode(ch, add_special_tokens=False)
            if len(pieces) != 1:
                raise ValueError(
                    f"codec needs {ch!r} to be one token, but the tokenizer splits it into {pieces}; "
                    "pick a tokenizer with single-digit tokens"
                )
            ids.append(pieces[0])
        if tokenizer.eos_token_id is None:
            raise ValueError("codec needs a tokenizer with an eos_token_id for the END action")
        self.action_token_ids: list[int] = ids + [int(tokenizer.eos_token_id)]  # (A,) vocabulary ids

    def values_to_text(self, scaled: np.ndarray) -> str:
        """`[0.512, 1.034] -> "512,1034,"` (rounded to `precision` decimals, trailing separator)."""
        scaled = np.asarray(scaled, dtype=np.float64)
        if np.any(scaled < 0) or not np.all(np.isfinite(scaled)):
            raise ValueError("codec can only write finite, non-negative scaled values")
        ints = np.rint(scaled * 10**self.config.precision).astype(np.int64)
        sep = self.config.separator
        return sep.join(str(v) for v in ints) + sep

    def text_to_values(self, text: str) -> np.ndarray:
        """Inverse of `values_to_text`; a trailing partial value or empty fields are dropped."""
        fields = text.split(self.config.separator)
        if not text.endswith(self.config.separator):
            fields = fields[:-1]  # the last value was cut off mid-way
        values = [int(f) for f in fields if f.isdigit()]
        return np.asarray(values, dtype=np.float64) / 10**self.config.precision

    def encode_prompt(self, context: np.ndarray) -> tuple[list[int], Scaler]:
        """Fit the scaler on `context` and return its prompt token ids and the scaler."""
        scaler = fit_scaler(context, self.config.alpha, self.config.beta)
        text = self.values_to_text(scaler.transform(context))
        return self.tokenizer.encode(text, add_special_tokens=False), scaler

    def actions_to_text(self, actions: np.ndarray) -> str:
        """Action indices (T,) -> text; END and padding (-1) stop the string."""
        chars = []
        for a in np.asarray(actions).tolist():
            if a < 0 or a == END:
                break
            chars.append(DIGITS[a] if a < SEP else self.config.separator)
        return "".join(chars)

    def decode_actions(self, actions: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch of action sequences (B, T) -> scaled values (B, horizon) and validity (B,).

        A row is valid when it holds at least `horizon` complete values; values past the horizon
        are dropped (LLMTime truncates), missing ones are NaN in invalid rows.
        """
        actions = np.atleast_2d(actions)
        values = np.full((actions.shape[0], horizon), np.nan)
        valid = np.zeros(actions.shape[0], dtype=bool)
        for i, row in enumerate(actions):
            parsed = self.text_to_values(self.actions_to_text(row))[:horizon]
            values[i, : parsed.size] = parsed
            valid[i] = parsed.size == horizon
        return values, valid
