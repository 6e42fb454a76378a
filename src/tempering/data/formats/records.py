"""What every importer shares: the format names, the codes, ``Example``, ``ConversionReport``, and the
collector that gathers examples and issues while a file is read. Knows no particular format."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from tempering.data.validate import Issue, ValidationReport, check_example

Format = Literal["chat", "prompt-completion", "text", "instruction", "classification"]
FORMATS: tuple[str, ...] = get_args(Format)

# code → what it means (on top of data.validate's codes, which converted examples are checked against).
FORMAT_ERROR_CODES = {
    "missing_field": "the line lacks a field its format needs",
    "field_not_string": "a field that holds text is not a string",
    "empty_field": "a field that holds text is empty or only whitespace",
    "no_template": "a text line holds no Phi-3 or ChatML chat template to parse",
    "text_outside_turns": "a templated text line has text outside its turns",
    "conflicting_fields": "the line holds two fields for one thing (both 'completion' and 'response')",
    "unknown_format": "no line looks like any supported format; each line is then checked as chat JSONL",
    "missing_column": "the classification file has no such column",
    "duplicate_column": "the classification file names its text or label column twice",
    "wrong_column_count": "a CSV row has a different number of fields from the header",
    "invalid_csv": "a CSV row cannot be parsed (a field over the csv module's size limit, a stray quote)",
    "nul_byte": "a CSV row holds a NUL byte",
}
FORMAT_WARNING_CODES = {
    "ignored_key": "the line has a key this format does not use; it is dropped",
    "format_not_detected": "no line looks like a supported format, so the file was checked as chat JSONL",
}


@dataclass(frozen=True)
class Example:
    """One converted example: where it came from, its chat messages, and its class label if it has one."""

    line: int
    messages: list[dict]
    label: str | None = None


class ConversionReport(ValidationReport):
    """A validation report of a file read in one of the importable formats (``format``)."""

    format: str

    def summary(self) -> str:
        return (
            f"{self.path} ({self.format}): {self.stats.get('converted', 0)} of "
            f"{self.stats.get('examples', 0)} example(s) converted, {len(self.errors)} error(s), "
            f"{len(self.warnings)} warning(s)"
        )


class FileProblem(Exception):
    """A problem of the whole file (a classification column missing): one error with no line."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class LineError(Exception):
    """A problem that stops one line from converting: (code, message) pairs."""

    def __init__(self, *problems: tuple[str, str]):
        super().__init__(problems[0][1])
        self.problems = list(problems)


class Collector:
    """Gathers examples, issues and counts while a file is read."""

    def __init__(self):
        self.examples: list[Example] = []
        self.errors: list[Issue] = []
        self.warnings: list[Issue] = []
        self.lines = self.records = 0

    def error(self, line: int | None, code: str, message: str) -> None:
        self.errors.append(Issue(line=line, code=code, message=message))

    def warning(self, line: int | None, code: str, message: str) -> None:
        self.warnings.append(Issue(line=line, code=code, message=message))

    def add(self, line: int, convert, label_of=None) -> None:
        """Run ``convert()`` (→ messages or (messages, label)) and check the result like chat data."""
        self.records += 1
        try:
            result = convert()
        except LineError as exc:
            for code, message in exc.problems:
                self.error(line, code, message)
            return
        messages, label = result if isinstance(result, tuple) else (result, None)
        errors, _ = check_example({"messages": messages})
        if errors:
            for code, message in errors:
                self.error(line, code, message)
            return
        self.examples.append(Example(line=line, messages=messages, label=label))
