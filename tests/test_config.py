"""Version and build information."""

import re

import fastbn


def test_version_is_a_string():
    assert isinstance(fastbn.__version__, str)
    assert re.match(r"^\d+\.\d+", fastbn.__version__)


def test_show_config_mentions_openmp_and_version(capsys):
    ret = fastbn.show_config()
    text = capsys.readouterr().out + ("" if ret is None else str(ret))
    assert "openmp" in text.lower()
    assert fastbn.__version__ in text


def test_public_api_names():
    for name in ["batch_stats", "moments", "merge_moments",
                 "batch_norm_train", "batch_norm_infer", "get_num_threads",
                 "set_num_threads", "num_threads", "show_config"]:
        assert callable(getattr(fastbn, name)), name
