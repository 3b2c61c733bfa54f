"""Encoder–decoder: dates written the ways people write them ("Tuesday, March 5, 2024", "5.3.2024", "5th Mar
2024", …) translated to ISO 8601 ("2024-03-05").

One recurrent stack reads the source characters and then writes the answer (the "many to many, delayed" form):
while it reads it is the encoder, its state at the `<go>` mark is the context vector c, and from there it is the
decoder, fed its previous output character at every step. The weights are shared between the two roles (Sutskever
et al. 2014 used two networks; the information has to pass through the one state at `<go>` either way). Sources
have different lengths: they are left-padded, so `<go>` and the answer sit at the same steps in every sequence.

Training uses teacher forcing: the decoder reads the true previous character, and the loss is the cross-entropy
of the answer's characters (and its `<eos>`). Evaluation decodes greedily: the decoder reads its own most likely
character, as it must on a new input, and a date counts only when every character and the `<eos>` are right.
The dates a model is scored on are held out: a tenth of the calendar is never shown in training, in any format.
"""

import datetime
import functools
import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import pydantic

from rnnlib.tasks.base import VALIDATION_SEED, CharacterTask, Metric, Task, TaskParams

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


FormatName = Literal["long", "long_day_first", "short", "short_day_first", "weekday", "ordinal", "us_numeric",
                     "dotted", "oracle", "compact"]

# How people write a date: name -> date -> text. English names are spelled out here (no locale), and each
# numeric format has one fixed reading (slashes month first, dots day first), so every source has one answer.
FORMATS: dict[FormatName, Callable[[datetime.date], str]] = {
    "long": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",  # March 5, 2024
    "long_day_first": lambda d: f"{d.day} {MONTHS[d.month - 1]} {d.year}",  # 5 March 2024
    "short": lambda d: f"{MONTHS[d.month - 1][:3]} {d.day}, {d.year}",  # Mar 5, 2024
    "short_day_first": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",  # 5 Mar 2024
    "weekday": lambda d: f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}, {d.year}",
    "ordinal": lambda d: f"{_ordinal(d.day)} of {MONTHS[d.month - 1]} {d.year}",  # 5th of March 2024
    "us_numeric": lambda d: f"{d.month}/{d.day}/{d.year}",  # 3/5/2024
    "dotted": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 05.03.2024
    "oracle": lambda d: f"{d.day:02d}-{MONTHS[d.month - 1][:3].upper()}-{d.year}",  # 05-MAR-2024
    "compact": lambda d: f"{d.year}{d.month:02d}{d.day:02d}",  # 20240305
}

PAD, GO, EOS = "·", "▶", "■"  # padding, the decoder's start mark, end of answer (shown as such in tables)
ANSWER_LENGTH = len("2024-03-05") + 1  # with <eos>
VALIDATION_EVERY = 10  # every 10th day of the calendar is held out for validation


class DatesParams(TaskParams):
    """Human-written dates to ISO 8601.

    Attributes:
        formats: the ways of writing a date to draw sources from (uniformly); all of `FORMATS` by default.
        first_year, last_year: the calendar the dates are drawn from (uniformly, every day equally likely).
        reverse_source: read the source backwards. Sutskever et al. (2014) reversed English sources so that the
            first source words sat next to the first target words. Here most formats end with the year, which the
            answer starts with, so the forward order already keeps those close; a GRU learned both orders
            equally fast (see the README).
    """

    name: Literal["dates"] = "dates"
    formats: tuple[FormatName, ...] = tuple(FORMATS)
    first_year: int = pydantic.Field(1950, ge=1, le=9999)
    last_year: int = pydantic.Field(2049, ge=1, le=9999)
    reverse_source: bool = False

    @pydantic.model_validator(mode="after")
    def _calendar(self):
        if not self.formats:
            raise ValueError(f"task.formats is empty; choose some of: {', '.join(FORMATS)}")
        if self.first_year > self.last_year:
            raise ValueError(f"task.first_year ({self.first_year}) is after task.last_year ({self.last_year}); "
                             "swap them")
        return self

    @property
    def source_length(self) -> int:
        """The longest source in characters: every source is left-padded to it."""
        return max(len(FORMATS[name](date)) for name in self.formats for date in _longest_dates(self.last_year))

    @property
    def sequence_length(self) -> int:
        return self.source_length + ANSWER_LENGTH


def _longest_dates(year: int) -> list[datetime.date]:
    """Dates of `year` that make every format as long as it gets (longest month, weekday and day names)."""
    return [datetime.date(year, month, day) for month in (5, 9, 12) for day in range(22, 29)]


@functools.cache
def alphabet(formats: tuple[FormatName, ...]) -> str:
    """Every character the sources and answers can hold, the padding, start and end marks first."""
    sample = [datetime.date(2000, 1, 1) + datetime.timedelta(days=d) for d in range(0, 366 * 4, 1)]
    chars = {c for name in formats for date in sample for c in FORMATS[name](date)} | set("0123456789-")
    return PAD + GO + EOS + "".join(sorted(chars))


class DatesTask(CharacterTask, Task):
    """Inputs: one-hot characters `[T, alphabet]`: the padded source, `<go>`, then the answer's characters
    (teacher forcing). Targets: the answer and `<eos>` from `<go>` on; the source steps are not scored.
    Metric: exact match of the greedily decoded answer. Baseline: a decoder that never looks at the source but
    knows the calendar: its cross-entropy per answer character is ln(days in the calendar) / 11, and it gets a
    date exactly right once in as many tries as there are days.
    """

    params_type = DatesParams
    params: DatesParams  # what `params_type` validates (narrows `Task.params`)
    target_form = "per_step"
    io_form = "encoder_decoder"
    loss = "sparse_categorical_crossentropy"
    metric = "exact_match"
    baseline_name = "ignore the source: ln(days) / 11 per character"
    prediction_view = "translations"

    @property
    def alphabet(self) -> str:
        return alphabet(tuple(self.params.formats))

    @property
    def unscored_steps(self) -> int:
        return self.params.source_length

    @functools.cached_property
    def _days(self) -> tuple[np.ndarray, np.ndarray]:
        """Day numbers (proleptic ordinals) of the training and the held-out validation dates."""
        first = datetime.date(self.params.first_year, 1, 1).toordinal()
        days = np.arange(first, datetime.date(self.params.last_year, 12, 31).toordinal() + 1)
        held_out = np.arange(len(days)) % VALIDATION_EVERY == VALIDATION_EVERY // 2
        return days[~held_out], days[held_out]

    def pairs(self, rng: np.random.Generator, days: np.ndarray, count: int) -> list[tuple[str, str]]:
        """`count` (source, ISO answer) pairs: dates drawn from `days`, each written in a random format."""
        formats = list(self.params.formats)
        chosen = rng.choice(days, size=count)
        names = rng.integers(0, len(formats), size=count)
        dates = [datetime.date.fromordinal(int(day)) for day in chosen]
        return [(FORMATS[formats[name]](date), date.isoformat()) for date, name in zip(dates, names)]

    def encode(self, pairs: list[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
        """Character ids of the inputs and targets of (source, answer) pairs: `[count, T]` and `[count, T, 1]`."""
        lookup = {char: index for index, char in enumerate(self.alphabet)}
        length, source_length = self.sequence_length, self.params.source_length
        x = np.zeros((len(pairs), length), np.int32)  # 0 is PAD
        y = np.zeros((len(pairs), length, 1), np.int32)
        for row, (source, answer) in enumerate(pairs):
            if self.params.reverse_source:
                source = source[::-1]
            x[row, source_length - len(source) : source_length] = [lookup[c] for c in source]
            answer_ids = [lookup[c] for c in answer] + [lookup[EOS]]
            x[row, source_length] = lookup[GO]
            x[row, source_length + 1 :] = answer_ids[:-1]
            y[row, source_length:, 0] = answer_ids
        return x, y

    def _sequences(self, pairs):
        ids, y = self.encode(pairs)
        return np.eye(self.num_features, dtype=np.float32)[ids], y

    def sample_batch(self, rng, batch_size):
        return self._sequences(self.pairs(rng, self._days[0], batch_size))

    def validation_data(self, num_sequences):
        return self._sequences(self.pairs(np.random.default_rng(VALIDATION_SEED), self._days[1], num_sequences))

    @functools.cached_property
    def baseline(self) -> float:
        """ln(number of days) / 11: by the chain rule, the cross-entropies of the 11 answer characters, each
        given the ones before it (teacher forcing), add up to the entropy of the date, ln(days) when every day
        is equally likely; a decoder blind to the source can do no better."""
        return math.log(len(self._days[0]) + len(self._days[1])) / ANSWER_LENGTH

    def generate(self, predict, x):
        """Greedy decoding: from `<go>` on, each step reads the most likely character of the step before (the
        teacher-forced answer in `x` is never read). Returns the probabilities `[batch, T, alphabet]` at every
        step; the answer is their argmax from `<go>` on.

        `predict` maps whole sequences to outputs; the steps not decoded yet are zeros, which a recurrent (or any
        causal) model never reads before it needs them, so every call has the same shape.
        """
        inputs = np.array(x, np.float32, copy=True)
        start = self.params.source_length
        inputs[:, start + 1 :] = 0.0
        eye = np.eye(self.num_features, dtype=np.float32)
        for step in range(start, self.sequence_length):
            outputs = np.asarray(predict(inputs))
            if step + 1 < self.sequence_length:
                inputs[:, step + 1] = eye[np.argmax(outputs[:, step], axis=-1)]
        return outputs

    def answers(self, ids: np.ndarray) -> list[str]:
        """The answers in `[batch, T]` ids (targets or argmax of outputs): from `<go>` up to the first `<eos>`."""
        texts = []
        for row in np.asarray(ids)[:, self.params.source_length :]:
            text = "".join(self.alphabet[i] for i in row)
            texts.append(text.split(EOS)[0] if EOS in text else text + "…")
        return texts

    def sources(self, x: np.ndarray) -> list[str]:
        """The source dates of one-hot inputs `[batch, T, alphabet]`, as written (unpadded, read forwards)."""
        ids = np.argmax(np.asarray(x)[:, : self.params.source_length], axis=-1)
        texts = ["".join(self.alphabet[i] for i in row).lstrip(PAD) for row in ids]
        return [t[::-1] for t in texts] if self.params.reverse_source else texts

    def _correct(self, y_true, y_pred) -> np.ndarray:
        """Which answer characters (and `<eos>`) the greedy decoder got right, `[batch, answer steps]`."""
        start = self.params.source_length
        return np.argmax(y_pred[:, start:], axis=-1) == np.asarray(y_true)[:, start:, 0]

    @staticmethod
    def _every_step(per_sequence: np.ndarray | np.bool, y_true) -> np.ndarray:
        """A per-sequence score `[batch, 1]` at every step `[batch, T]` (only the last step counts)."""
        return np.broadcast_to(per_sequence, (len(y_true), y_true.shape[1])).astype(np.float64)

    def metric_per_step(self, y_true, y_pred):
        """1 at every step of a sequence whose whole answer is right."""
        return self._every_step(self._correct(y_true, y_pred).all(axis=1, keepdims=True), y_true)

    def _character_accuracy(self, y_true, y_pred):
        return self._every_step(self._correct(y_true, y_pred).mean(axis=1, keepdims=True), y_true)

    def metric_weights(self, length):
        """Each sequence counts once: its metrics are read at the last step."""
        weights = np.zeros(length)
        weights[-1] = 1.0
        return weights

    @property
    def metrics(self):
        return {"exact_match": Metric(self.metric_per_step), "char_accuracy": Metric(self._character_accuracy)}

    @property
    def metric_baselines(self):
        days = len(self._days[0]) + len(self._days[1])
        return {"ignore the source": {"exact_match": 1.0 / days}}

    def prediction_arrays(self, predict):
        """The first 16 validation dates: sources, answers, greedy decodings and the decoder's probabilities."""
        x, y = self.validation_data(16)
        y_pred = self.generate(predict, x)
        return {"x": x, "y_true": y, "y_pred": y_pred, "source": np.array(self.sources(x)),
                "target": np.array(self.answers(y[:, :, 0])),
                "decoded": np.array(self.answers(np.argmax(y_pred, axis=-1)))}
