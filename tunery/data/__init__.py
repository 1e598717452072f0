"""Datasets: formats, validation with line-numbered problems, statistics, example → tokens + loss mask."""

from tunery.data.formats import Example, Part, Turn, parse_example, user_example
from tunery.data.stats import distribution, tuning_data_stats
from tunery.data.tokenize import IGNORE_INDEX, Encoded, encode, end_of_turn_token, prompt_ids
from tunery.data.validation import Problem, ValidationReport, read_examples

__all__ = [
    "IGNORE_INDEX",
    "Encoded",
    "Example",
    "Part",
    "Problem",
    "Turn",
    "ValidationReport",
    "distribution",
    "encode",
    "end_of_turn_token",
    "parse_example",
    "prompt_ids",
    "read_examples",
    "tuning_data_stats",
    "user_example",
]
