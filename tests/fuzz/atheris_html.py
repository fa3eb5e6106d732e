"""atheris (libFuzzer) harness for ``html_to_text``: no crash, no hang, a clear answer.

    PYTHONPATH=. python tests/fuzz/atheris_html.py -max_total_time=60 -timeout=20 CORPUS_DIR

Properties (as test_fuzz_html.py): ``None`` exactly for bytes judged binary, otherwise a
``str`` that is valid Unicode (encodes to UTF-8) without NUL.
"""

import sys

import atheris

with atheris.instrument_imports(include=["lm"]):
    from lm.data.extract import html_to_text, looks_binary


def TestOneInput(data: bytes) -> None:
    text = html_to_text(data)
    if looks_binary(data):
        assert text is None
    else:
        assert isinstance(text, str)
        text.encode("utf-8")
        assert "\x00" not in text


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
