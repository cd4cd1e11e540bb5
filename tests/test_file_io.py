# Copyright (c) lt_d2 contributors.
import json
import os
import stat

import pytest

from lt_d2.file_io import atomic_write, write_json_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic({"a": 1}, str(path))

    def fail(f):
        f.write(b"{half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), fail)
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_json_is_written_readable_by_others_into_a_new_folder(tmp_path):
    path = tmp_path / "new" / "ids.json"
    write_json_atomic([1, "2008_000002"], str(path), separators=(",", ":"))
    assert path.read_text() == '[1,"2008_000002"]'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
