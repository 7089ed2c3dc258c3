"""The benchmark's upstream answers as Ollama and as an OpenAI API server do (its self-test).

`make bench` measures chatsite relaying both wire formats from `bench/upstream.py`; its
`--self-test` serves in-process and checks the frames of every kind of answer: NDJSON lines
and the `done` line, server-sent events with the role, the tokens, `finish_reason`, usage
and `[DONE]`.
"""

import subprocess
import sys

from tests.servers import ROOT


def test_the_bench_upstreams_answers_keep_to_both_wire_formats():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "upstream.py"), "--self-test"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "self-test ok\n"
