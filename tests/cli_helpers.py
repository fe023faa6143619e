"""Checks shared by the tests of the command-line tools."""


def assert_one_line_error(result, program, *fragments):
    """Assert that `result` failed with exit code 2 and one `PROGRAM: error:` line containing every fragment."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: error: ")]
    assert len(error_lines) == 1, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in error_lines[0]
