import re

from fmrilm.provenance import commit, machine, utc_now


def test_commit_of_this_checkout_and_outside_one(tmp_path):
    assert re.fullmatch(r"[0-9a-f]{7,}(\+dirty)?", commit())
    assert commit(tmp_path) == "unknown"


def test_machine_and_time():
    assert re.search(r"\d+ cores, \d+ GiB, .*torch \d", machine())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())
